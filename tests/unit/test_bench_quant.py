"""``stylefleet bench quant``: its flags, the turn order and ratio arithmetic, the quality table
and its gate as the router judges it, the contact sheet, the wins verdict and the fp16
conversion. Nothing is timed."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from stylefleet.bench import quant
from stylefleet.compare import drift, matte_drift
from stylefleet.config import Gate, MatteGate
from stylefleet.spec import load_serve_file
from stylefleet.tools import cli

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["bench", "quant", *argv])


def test_quant_defaults_measure_every_network_in_three_turns() -> None:
    args = _parse()
    assert args.networks == ["u2netp", "multistyle26", "arbitrary_transform"]
    assert (args.turns, args.seconds, args.batch_sizes, args.served, args.gpu) == (3, 10.0, "1,4", True, False)
    assert args.func is quant.main


def test_quant_takes_a_subset_of_networks_and_skips_the_served_part() -> None:
    args = _parse("--networks", "u2netp,multistyle26", "--turns", "1", "--seconds", "2", "--no-served", "--photos", "/x")
    assert args.networks == ["u2netp", "multistyle26"]
    assert (args.turns, args.seconds, args.served, args.photos) == (1, 2.0, False, Path("/x"))


@pytest.mark.parametrize("argv", [("--networks", "u2netp,resnet"), ("--networks", ""), ("--turns", "0")])
def test_quant_refuses_unknown_networks_and_no_turns(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(*argv)
    assert exit_info.value.code == 2


def test_alternate_runs_the_sides_in_turns_and_keeps_each_sides_results() -> None:
    calls: list[str] = []

    def side(name: str) -> Any:
        def run() -> str:
            calls.append(name)
            return f"{name}{calls.count(name)}"

        return run

    out = quant.alternate([side("A"), side("B")], 3)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert out == [["A1", "A2", "A3"], ["B1", "B2", "B3"]]
    with pytest.raises(ValueError):
        quant.alternate([side("A")], 0)


def test_ratios_pair_each_turn_and_take_the_median() -> None:
    got = quant.ratios([10.0, 20.0, 10.0], [15.0, 20.0, 30.0])
    assert got == {"ratios": [1.5, 1.0, 3.0], "median_ratio": 1.5}
    assert quant.ratios([0.0, 10.0], [5.0, 12.0]) == {"ratios": [None, 1.2], "median_ratio": 1.2}
    with pytest.raises(ValueError):
        quant.ratios([1.0], [1.0, 2.0])


def _matte(box: tuple[int, int, int, int], shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    y0, y1, x0, x1 = box
    out[y0:y1, x0:x1] = 255
    return out


def test_quality_table_passes_identical_mattes_and_names_what_a_shifted_one_fails() -> None:
    ref = {"a.jpg": _matte((10, 50, 10, 50)), "b.jpg": _matte((20, 40, 20, 40))}
    same = quant.quality_table("matte", quant.comparisons("matte", ref, ref), Gate())
    assert same["gate"] == {"thresholds": Gate().matte.model_dump(), "failing": [], "verdict": "pass"}
    assert same["means"]["iou_mean"] == 1.0 and same["worst"]["iou"] == 1.0

    shifted = {"a.jpg": ref["a.jpg"], "b.jpg": _matte((26, 46, 26, 46))}  # IoU 196/604 on b
    table = quant.quality_table("matte", quant.comparisons("matte", ref, shifted), Gate())
    assert table["gate"]["verdict"] == "fail"
    assert "min_iou" in table["gate"]["failing"]
    assert table["photos"]["a.jpg"]["iou"] == 1.0
    assert table["photos"]["b.jpg"]["iou"] == pytest.approx(196 / 604, abs=1e-4)
    assert table["worst"]["iou"] == table["photos"]["b.jpg"]["iou"]
    assert table["means"]["iou_mean"] == pytest.approx((1 + 196 / 604) / 2, abs=1e-4)
    lenient = Gate(matte=MatteGate(min_iou=0.5, max_mean_abs_alpha_diff=0.5, max_edge_error=5.0))
    assert quant.quality_table("matte", quant.comparisons("matte", ref, shifted), lenient)["gate"]["verdict"] == "pass"


def test_quality_table_judges_images_by_psnr_and_ssim() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    noisy = np.clip(photo.astype(np.int16) + rng.integers(-60, 61, photo.shape), 0, 255).astype(np.uint8)
    table = quant.quality_table("image", {"p": drift(photo, noisy)}, Gate())
    assert table["gate"]["verdict"] == "fail" and "min_psnr_db" in table["gate"]["failing"]
    assert quant.quality_table("image", {"p": drift(photo, photo)}, Gate())["gate"]["verdict"] == "pass"


def test_contact_sheet_has_a_row_of_three_panels_per_photo(tmp_path: Path) -> None:
    ref, got = _matte((10, 50, 10, 50)), _matte((12, 50, 10, 50))
    path = quant.contact_sheet({"a": (ref, got), "b": (ref, ref)}, tmp_path / "sheet.png", height=32)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (2 * (32 + 4), 3 * 32 + 2 * 4, 3)
    diff = sheet[:32, 2 * 36 :]
    assert diff.max() == 255 and sheet[36 : 36 + 32, 2 * 36 :].max() == 0  # the second photo's pair is identical


def test_scratch_leaves_nothing_in_the_temp_directory() -> None:
    before = set(Path(tempfile.gettempdir()).glob("stylefleet-bench-quant.*"))
    with quant.scratch() as tmp:
        (tmp / "model.onnx").write_bytes(b"x" * 10)
        assert tmp.is_dir()
    assert not tmp.exists()
    assert set(Path(tempfile.gettempdir()).glob("stylefleet-bench-quant.*")) == before


def test_a_build_runs_inside_its_scratch_folder_so_stray_files_go_with_it() -> None:
    cwd = Path.cwd()
    with quant.scratch() as tmp:
        with quant.inside(tmp):
            Path("stray.data").write_bytes(b"x")  # what a failed shape inference leaves in the cwd
            assert Path.cwd() == tmp.resolve()
        assert Path.cwd() == cwd and not (cwd / "stray.data").exists()
    assert not tmp.exists()


def _table(verdict: str, failing: list[str]) -> dict[str, Any]:
    return {"means": {"iou_mean": 0.97}, "gate": {"verdict": verdict, "failing": failing}}


def test_int8_wins_only_when_faster_and_within_its_gate() -> None:
    win = quant.verdict("u2netp", 1.4, _table("pass", []))
    assert win.wins and "WINS" in win.line and "1.40x" in win.line
    slow = quant.verdict("u2netp", 1.02, _table("pass", []))
    assert not slow.wins and "needs 1.05x" in slow.line
    bad = quant.verdict("u2netp", 1.4, _table("fail", ["min_iou"]))
    assert not bad.wins and "fails on min_iou" in bad.line and "iou_mean 0.97" in bad.line
    broken = quant.verdict("arbitrary_transform", None, None, "quantization failed (x)")
    assert not broken.wins and "quantization failed" in broken.line


def test_the_verdicts_speed_is_the_served_like_setup_at_the_largest_batch() -> None:
    rows = [
        {"batch_size": 1, "served_like": True, "int8_over_fp32": {"median_ratio": 3.0}},
        {"batch_size": 4, "served_like": False, "int8_over_fp32": {"median_ratio": 2.0}},
        {"batch_size": 4, "served_like": True, "int8_over_fp32": {"median_ratio": 1.1}},
    ]
    assert quant.speed_ratio(rows) == 1.1
    assert quant.speed_ratio(rows[:2]) == 2.0
    assert quant.speed_ratio([]) is None


def test_setups_are_one_call_on_every_core_and_one_thread_calls_per_core() -> None:
    assert [(b, t, c) for _, b, t, c in quant.setups([1, 4], 2)] == [(1, 2, 1), (1, 1, 2), (4, 2, 1), (4, 1, 2)]


def _spec(variants: dict[str, str]) -> Any:
    style = SimpleNamespace(variant_list=lambda: [SimpleNamespace(name=n, deployment=d) for n, d in variants.items()])
    return SimpleNamespace(args=SimpleNamespace(styles={"remove-background": style}))


def test_the_served_part_forces_each_variant_by_the_form_field() -> None:
    fp32, int8 = quant.served_cases(_spec({"fp32": "remove-background", "int8": "remove-background-int8"}))
    assert (fp32.style, fp32.fields, fp32.deployment) == ("remove-background", (("variant", "fp32"),), "remove-background")
    assert (int8.style, int8.fields, int8.deployment) == ("remove-background", (("variant", "int8"),), "remove-background-int8")
    with pytest.raises(SystemExit, match="no variants fp32 and int8"):
        quant.served_cases(_spec({"default": "remove-background"}))


def test_the_served_part_turns_shadows_off_in_its_copy_only() -> None:
    document = {
        "applications": [
            {
                "deployments": [
                    {"name": "router", "user_config": {"splits": {}, "shadows": {"remove-background": {"int8": 10}}}},
                    {"name": "remove-background", "user_config": {"max_batch_size": 4}},
                ]
            }
        ]
    }
    config = quant.without_shadows(document)
    assert config["applications"][0]["deployments"][0]["user_config"] == {"splits": {}, "shadows": {}}
    assert config["applications"][0]["deployments"][1]["user_config"] == {"max_batch_size": 4}
    assert document["applications"][0]["deployments"][0]["user_config"]["shadows"] == {"remove-background": {"int8": 10}}


def test_the_served_turns_give_int8_fp32s_replica_setup_and_budget() -> None:
    from stylefleet.deployments.onnx_session import available_cores
    from stylefleet.spec import check_document

    shipped = load_serve_file(ROOT / "serve_config.yaml")
    fp32, int8 = quant.served_cases(shipped.app)
    assert quant.replica_setup(shipped.app, int8.deployment)["model_calls"] == 1  # the shipped shadow
    deployed = check_document(quant.int8_like_fp32(shipped.document, shipped.app, fp32.deployment, int8.deployment)).app
    assert quant.replica_setup(deployed, int8.deployment) == quant.replica_setup(deployed, fp32.deployment)
    assert quant.replica_setup(deployed, fp32.deployment)["model_calls"] == available_cores()
    assert deployed.memory_budget_of(int8.deployment) == shipped.app.memory_budget_of(fp32.deployment)
    assert shipped.document == load_serve_file(ROOT / "serve_config.yaml").document  # the original is untouched


def test_gpu_refuses_without_cuda_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "has_cuda", lambda: False)
    out = tmp_path / "quant.json"
    assert quant.main(_parse("--gpu", "--out", str(out))) == 2
    assert not out.exists()


def _tiny_conv() -> bytes:
    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [weight],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString())


def test_the_gpu_contenders_are_fp32_fp16_and_int8_with_fp32_inputs() -> None:
    fp32 = _tiny_conv()
    models = quant.gpu_models(fp32, b"int8 bytes")
    assert list(models) == ["fp32", "fp16", "int8"] and models["fp32"] is fp32 and models["int8"] == b"int8 bytes"
    fp16 = onnx.load_from_string(models["fp16"])
    assert {i.data_type for i in fp16.graph.initializer} == {TensorProto.FLOAT16}
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.ones((2, 3, 8, 8), np.float32)
    session = ort.InferenceSession(models["fp16"], providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    assert y.dtype == np.float32 and y.shape == (2, 4, 8, 8)
    assert np.allclose(y[:, :, 4, 4], 2.7, atol=1e-2)  # 27 weights of 0.1 over ones, in fp16


def test_matte_drift_is_what_the_table_reports() -> None:
    ref, got = _matte((10, 50, 10, 50)), _matte((10, 50, 14, 50))
    table = quant.quality_table("matte", {"p": matte_drift(ref, got)}, Gate())
    assert table["photos"]["p"]["mean_abs_alpha_diff"] == round(matte_drift(ref, got).mean_abs_alpha_diff, 4)
