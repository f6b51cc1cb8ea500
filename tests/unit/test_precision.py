"""A deployment's ``precision``: which kinds take which, and what the loader then loads."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from stylefleet.config import DeploymentConfig
from stylefleet.deployments import loader, quantize
from stylefleet.deployments.kinds import KINDS
from stylefleet.deployments.onnx_session import to_fp16, with_symbolic_batch
from stylefleet.deployments.registry import MODELS, ResolvedModel, resolve
from stylefleet.spec import AppSpec
from tests.unit.apps import shipped_args


def _app(**deployment: Any) -> dict[str, Any]:
    args = copy.deepcopy(shipped_args())
    args["deployments"]["extra"] = {"num_cpus": 0.1, **deployment}
    return args


def test_fp32_is_the_default() -> None:
    assert DeploymentConfig(model="u2netp").precision == "fp32"


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ValidationError, match="fp16 needs device: cuda"):
        DeploymentConfig(model="u2netp", precision="fp16")


def test_int8_is_accepted_for_u2netp() -> None:
    spec = AppSpec.from_args(_app(model="u2netp", precision="int8"))
    assert spec.model_spec("extra").precision == "int8"


@pytest.mark.parametrize("model", ["multistyle26", "arbitrary", "haar-face", "face-mesh"])
def test_int8_is_refused_where_the_registry_has_no_int8_file(model: str) -> None:
    with pytest.raises(ValidationError, match=r"deployments\.extra\.precision: int8 is not available .* available for: u2netp"):
        AppSpec.from_args(_app(model=model, precision="int8"))


def test_fp16_is_refused_for_a_network_that_is_not_onnx() -> None:
    with pytest.raises(ValidationError, match=r"deployments\.extra\.precision: fp16 is not available for model face-mesh"):
        AppSpec.from_args(_app(model="face-mesh", precision="fp16", device="cuda", num_gpus=0.5))


def test_fp16_on_cuda_is_accepted_for_onnx_kinds() -> None:
    spec = AppSpec.from_args(_app(model="u2netp", precision="fp16", device="cuda", num_gpus=0.5))
    assert loader.runtime_options(spec.model_spec("extra")).fp16


def test_kind_precisions() -> None:
    assert KINDS["u2netp"].precisions() == ("fp32", "int8", "fp16")
    assert KINDS["multistyle26"].precisions() == ("fp32", "fp16")
    assert KINDS["face-mesh"].precisions() == ("fp32",)
    assert KINDS["u2netp"].files_at("int8") == ("u2netp_int8",)
    assert KINDS["u2netp"].expected_sha256("int8") == MODELS["u2netp_int8"].sha256


def test_int8_loads_the_derived_file_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The loader asks the cache for u2netp_int8 (here a stand-in answers with the fp32 file)."""
    asked: list[tuple[str, Path]] = []
    stand_in = resolve("u2netp")

    def ensure(name: str, folder: Path, **_: object) -> ResolvedModel:
        asked.append((name, folder))
        return ResolvedModel(spec=MODELS[name], path=stand_in.path, sha256="f" * 64)

    monkeypatch.setattr(quantize, "ensure", ensure)
    monkeypatch.setenv(quantize.CACHE_ENV, str(tmp_path))
    spec = AppSpec.from_args(_app(model="u2netp", precision="int8")).model_spec("extra")
    loaded = loader.load_model(spec)
    assert asked == [("u2netp_int8", tmp_path)]
    assert loaded.model_sha256 == "f" * 64


def test_fp32_never_asks_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def ensure(*_: object, **__: object) -> ResolvedModel:
        raise AssertionError("fp32 must load the shipped file")

    monkeypatch.setattr(quantize, "ensure", ensure)
    loaded = loader.load_model(AppSpec.from_args(shipped_args()).model_spec("remove-background"))
    assert loaded.model_sha256 == MODELS["u2netp"].sha256


def test_fp16_conversion_keeps_fp32_inputs_and_outputs() -> None:
    converted = onnx.load_from_string(to_fp16(with_symbolic_batch(resolve("u2netp").path)))
    floats = {i.data_type for i in converted.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp16_network_loads_and_runs() -> None:
    """On a CPU only that it loads and answers in fp32 (fp16's speed is a GPU's)."""
    session = ort.InferenceSession(to_fp16(with_symbolic_batch(resolve("u2netp").path)), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input.1": np.zeros((1, 3, 320, 320), np.float32)})[0]
    assert out.dtype == np.float32 and out.shape == (1, 1, 320, 320)


# -- the quality gate: a derived model never takes most of a style's traffic while it fails ------


SHIPPED_TRAFFIC = {"splits": {"remove-background": {"fp32": 100, "int8": 0}}, "shadows": {"remove-background": {"int8": 10}}}


def _two_variants(split: dict[str, float] | None = None, shadows: dict[str, float] | None = None) -> AppSpec:
    args = _app(model="u2netp", precision="int8")
    args["styles"]["cutout-ab"] = {
        "variants": [
            {"name": "fp32", "deployment": "remove-background", "params": {"threshold": 128}},
            {"name": "int8", "deployment": "extra", "params": {"threshold": 128}},
        ]
    }
    traffic = copy.deepcopy(SHIPPED_TRAFFIC)
    if split is not None:
        traffic["splits"]["cutout-ab"] = split
    if shadows is not None:
        traffic["shadows"]["cutout-ab"] = shadows
    return AppSpec.model_validate({"args": args, "traffic": traffic})


def test_the_recorded_int8_figures_fail_the_gate() -> None:
    """What the refusals below rest on: if the recipe ever passes, these tests need a failing stand-in."""
    quality = MODELS["u2netp_int8"].quality
    assert quality is not None and quality.failures()


def test_a_shadowed_int8_variant_with_no_traffic_is_accepted() -> None:
    spec = _two_variants({"fp32": 100, "int8": 0}, {"int8": 10})
    assert spec.traffic.shadows["cutout-ab"] == {"int8": 10}


def test_int8_with_a_smaller_share_is_accepted() -> None:
    _two_variants({"fp32": 90, "int8": 10})


@pytest.mark.parametrize("split", [{"fp32": 10, "int8": 90}, {"fp32": 50, "int8": 50}, {"int8": 1}])
def test_int8_with_the_largest_share_is_refused_naming_the_figures(split: dict[str, float]) -> None:
    quality = MODELS["u2netp_int8"].quality
    assert quality is not None
    with pytest.raises(ValidationError) as raised:
        _two_variants(split)
    message = str(raised.value)
    assert "user_config.splits.cutout-ab: variant 'int8'" in message
    assert f"IoU {quality.iou} < 0.98" in message and f"mean |alpha diff| {quality.mean_abs_alpha_diff} > 0.01" in message


def test_no_split_shares_equally_so_int8_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"styles\.cutout-ab: variant 'int8'"):
        _two_variants()


def test_a_style_bound_to_int8_alone_is_refused() -> None:
    args = _app(model="u2netp", precision="int8")
    args["styles"]["cutout-int8"] = {"deployment": "extra"}
    with pytest.raises(ValidationError, match=r"styles\.cutout-int8: variant 'default' \(deployment extra, precision int8\)"):
        AppSpec.from_args(args)


def test_a_live_split_is_held_to_the_gate_too() -> None:
    spec = _two_variants({"fp32": 100, "int8": 0})
    live = copy.deepcopy(SHIPPED_TRAFFIC)
    live["splits"]["cutout-ab"] = {"fp32": 1, "int8": 99}
    with pytest.raises(ValueError, match=r"cutout-ab: variant 'int8' .* misses its quality gate"):
        spec.traffic_settings(live)


def test_the_shipped_remove_background_split_is_refused_without_its_int8_shadow() -> None:
    """A router user_config that forgets remove-background shares it equally: refused."""
    spec = AppSpec.from_args(shipped_args())
    with pytest.raises(ValueError, match=r"styles\.remove-background: variant 'int8'"):
        spec.traffic_settings({"splits": {"oil-paint": {"a": 1}}})


def test_int8_passing_its_gate_may_take_the_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    passing = replace(MODELS["u2netp_int8"].quality, iou=0.99, worst_iou=0.97, mean_abs_alpha_diff=0.005)  # type: ignore[type-var]
    monkeypatch.setitem(MODELS, "u2netp_int8", replace(MODELS["u2netp_int8"], quality=passing))
    spec = _two_variants({"fp32": 0, "int8": 100})
    assert spec.traffic.splits["cutout-ab"]["int8"] == 100


def test_id_photo_may_use_the_int8_matte() -> None:
    """`uses` is the operator's choice of deployment, not a traffic split: accepted."""
    args = _app(model="u2netp", precision="int8")
    args["deployments"]["id-photo"]["uses"] = {"matte": "extra", "faces": "face-detect"}
    spec = AppSpec.from_args(args)
    assert spec.model_spec("id-photo").uses["matte"].precision == "int8"


def test_args_alone_leave_variant_gates_to_the_router_settings() -> None:
    """Serve's app builder gets the args alone; the split is checked when the router applies it."""
    args = _app(model="u2netp", precision="int8")
    args["styles"]["cutout-ab"] = {
        "variants": [{"name": "fp32", "deployment": "remove-background"}, {"name": "int8", "deployment": "extra"}]
    }
    spec = AppSpec.from_args(args)
    with pytest.raises(ValueError, match=r"styles\.cutout-ab: variant 'int8'"):
        spec.traffic_settings(SHIPPED_TRAFFIC)
