"""The int8 u2netp: its recipe, its reproducible build, the model cache, and its recorded figures.

One real build per session (about 20-40 s), into a temporary cache folder removed afterwards;
the cache's own behaviour is checked with a stand-in build.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from stylefleet.config import ModelSpec
from stylefleet.deployments import quantize
from stylefleet.deployments.loader import load_model
from stylefleet.deployments.registry import MODELS, ResolvedModel, resolve
from stylefleet.errors import ModelUnavailable
from stylefleet.tools.cli import main as cli_main

NAME = "u2netp_int8"
PORTRAITS = Path(__file__).resolve().parents[2] / ".portraits"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


BUILD_LOG = _Records()


@pytest.fixture(scope="module")
def built() -> Iterator[ResolvedModel]:
    """The derived file built here, in this process, from nothing, as a replica's loader does with
    an empty cache: ``ensure`` refuses it unless its sha256 is the registry's, which another
    process's build recorded (reproducibility)."""
    log = logging.getLogger(quantize.__name__)
    level = log.level
    log.addHandler(BUILD_LOG)
    log.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="stylefleet-int8-test.") as folder:
            spec = ModelSpec(deployment="int8", model="u2netp", precision="int8", model_calls=1, lone_call=False)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(quantize.CACHE_ENV, folder)
                loaded = load_model(spec)
            assert loaded.model_sha256 == MODELS[NAME].sha256
            yield quantize.ensure(NAME, Path(folder))
    finally:
        log.removeHandler(BUILD_LOG)
        log.setLevel(level)


@pytest.fixture(scope="module")
def graph(built: ResolvedModel) -> onnx.GraphProto:
    return onnx.load(str(built.path)).graph


def _weight_dq(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Conv node name -> the DequantizeLinear feeding its weight (absent: an fp32 weight)."""
    producer = {out: node for node in graph.node for out in node.output}
    out = {}
    for node in graph.node:
        if node.op_type == "Conv":
            feeding = producer.get(node.input[1])
            if feeding is not None and feeding.op_type == "DequantizeLinear":
                out[node.name] = feeding
    return out


def test_a_loader_with_an_empty_cache_builds_the_file_and_says_so(built: ResolvedModel) -> None:
    assert any(m.startswith(f"{NAME} is not in the model cache") for m in BUILD_LOG.messages)
    assert any(m.startswith(f"built {NAME} in ") for m in BUILD_LOG.messages)


def test_build_is_reproducible_across_processes(built: ResolvedModel) -> None:
    assert built.sha256 == MODELS[NAME].sha256
    assert hashlib.sha256(built.path.read_bytes()).hexdigest() == MODELS[NAME].sha256


@pytest.fixture(scope="module")
def rule_inputs() -> quantize.RuleInputs:
    """What the rules look at when the recipe is built: the pre-processed graph, the calibration inputs."""
    recipe = quantize.RECIPES[NAME]
    with tempfile.TemporaryDirectory(prefix="stylefleet-int8-test.") as folder:
        model = onnx.load(str(quantize.prepared_source(recipe, resolve(recipe.source), Path(folder))))
    return quantize.RuleInputs(model, quantize.calibration_feeds(recipe.photos))


def _kinds(inputs: quantize.RuleInputs, names: list[str]) -> dict[str, str]:
    kinds = {n.name: n.op_type for n in inputs.model.graph.node}
    return {n: kinds[n] for n in names}


@pytest.fixture(scope="module")
def excluded(rule_inputs: quantize.RuleInputs) -> dict[str, str]:
    """Every node the recipe keeps fp32: name -> op type."""
    return _kinds(rule_inputs, quantize.excluded_nodes(quantize.RECIPES[NAME], rule_inputs.model, rule_inputs.feeds))


def test_the_recipe_uses_all_three_rules() -> None:
    assert quantize.RECIPES[NAME].exclude == ("output-heads", "low-resolution", "near-constant-channels")


def test_output_heads_rule_picks_the_seven_heads(rule_inputs: quantize.RuleInputs) -> None:
    """Each side output's Sigmoid, its Conv, the Resize between them where it is upsampled, and
    the Concat fusing the side outputs."""
    heads = _kinds(rule_inputs, quantize.EXCLUSION_RULES["output-heads"](rule_inputs))
    assert sorted(heads.values()) == ["Concat"] + ["Conv"] * 7 + ["Resize"] * 5 + ["Sigmoid"] * 7


def _output_sides(model: onnx.ModelProto) -> dict[str, int]:
    """Conv name -> its output's width, by ONNX shape inference at batch 1 (not the rule's own run)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    del fixed.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(fixed)
    widths = {v.name: v.type.tensor_type.shape.dim[-1].dim_value for v in inferred.graph.value_info if v.type.tensor_type.shape.dim}
    return {n.name: widths[n.output[0]] for n in inferred.graph.node if n.op_type == "Conv" and n.output[0] in widths}


def test_low_resolution_rule_picks_every_conv_at_80_px_or_less(rule_inputs: quantize.RuleInputs) -> None:
    sides = _output_sides(rule_inputs.model)
    picked = {n for n, op in _kinds(rule_inputs, quantize.EXCLUSION_RULES["low-resolution"](rule_inputs)).items() if op == "Conv"}
    assert picked == {n for n, side in sides.items() if side <= 80}
    assert {sides[n] for n in picked} == {80, 40, 20, 10}


def test_near_constant_channels_rule_picks_the_dead_filters(rule_inputs: quantize.RuleInputs) -> None:
    figures = quantize.near_constant_channels(rule_inputs)
    picked = _kinds(rule_inputs, quantize.EXCLUSION_RULES["near-constant-channels"](rule_inputs))
    assert sorted(n for n, op in picked.items() if op == "Conv") == ["Conv_765", "Conv_787", "Conv_898"]
    ratio, spread = figures["Conv_765"]
    assert ratio > 15 and spread < 0.01  # one channel at ~18x the median, nearly constant
    ratio, spread = figures["Conv_0"]  # the nearest miss: a dominant channel that really varies
    assert ratio > 5 and spread > 0.03 and "Conv_0" not in picked


def test_excluded_convs_keep_fp32_weights_and_the_rest_are_quantized(graph: onnx.GraphProto, excluded: dict[str, str]) -> None:
    convs = {n.name for n in graph.node if n.op_type == "Conv"}
    kept = {n for n, op in excluded.items() if op == "Conv"}
    assert kept < convs
    assert set(_weight_dq(graph)) == convs - kept


def test_the_output_sigmoids_read_fp32_tensors(graph: onnx.GraphProto) -> None:
    """No side output passes through int8 on its way out (the output-heads rule's purpose)."""
    producer = {out: node for node in graph.node for out in node.output}
    sigmoids = [producer[o.name] for o in graph.output]
    assert [n.op_type for n in sigmoids] == ["Sigmoid"] * 7
    assert all(producer[n.input[0]].op_type != "DequantizeLinear" for n in sigmoids)


def test_weights_are_per_channel(graph: onnx.GraphProto) -> None:
    initializers = {i.name: i for i in graph.initializer}
    quantized = _weight_dq(graph)
    assert quantized
    for conv, dq in quantized.items():
        weight = numpy_helper.to_array(initializers[dq.input[0]])
        scale = numpy_helper.to_array(initializers[dq.input[1]])
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],), conv


def test_opset_is_the_recipes(graph: onnx.GraphProto, built: ResolvedModel) -> None:
    model = onnx.load(str(built.path))
    assert {o.domain: o.version for o in model.opset_import}[""] == quantize.RECIPES[NAME].opset == 13


def test_record_names_recipe_source_and_runtime(built: ResolvedModel) -> None:
    import json

    record = json.loads(quantize.record_path(built.path).read_text())
    assert record["sha256"] == built.sha256
    assert record["source"]["sha256"] == MODELS["u2netp"].sha256
    assert record["recipe"] == json.loads(json.dumps(quantize.RECIPES[NAME].to_json()))
    assert record["onnxruntime"] == quantize.ort_version()


@pytest.mark.skipif(not (PORTRAITS / "biden.jpg").is_file(), reason="run `make portraits` to fetch the held-out portraits")
def test_recorded_quality_is_measured_again(built: ResolvedModel) -> None:
    derived = built.path.read_bytes()
    recorded = MODELS[NAME].quality
    assert recorded is not None
    measured = quantize.held_out_quality(NAME, derived, PORTRAITS)
    assert measured == recorded
    # quantized, so not fp32's answer
    assert measured.mean_abs_alpha_diff > 0


def test_mattes_differ_from_fp32(built: ResolvedModel) -> None:
    photo = [quantize.Photo("coffee", quantize.calibration_photo("coffee"))]
    fp32 = quantize.mattes(quantize.source_bytes(NAME), photo)["coffee"]
    int8 = quantize.mattes(built.path.read_bytes(), photo)["coffee"]
    assert fp32.shape == int8.shape and not np.array_equal(fp32, int8)


# -- the cache, with a stand-in build --------------------------------------------------------


FAKE = b"not really a network"


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``build`` returns FAKE, whose sha256 the registry then expects; returns the call count."""
    calls: list[int] = []

    def build(recipe: quantize.Recipe, *, source: ResolvedModel | None = None) -> bytes:
        calls.append(1)
        return FAKE

    monkeypatch.setattr(quantize, "build", build)
    monkeypatch.setitem(MODELS, NAME, replace(MODELS[NAME], sha256=hashlib.sha256(FAKE).hexdigest()))
    return calls


def test_missing_file_is_built(tmp_path: Path, fake_build: list[int]) -> None:
    model = quantize.ensure(NAME, tmp_path / "cache")
    assert model.path.read_bytes() == FAKE and fake_build == [1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["u2netp_int8.json", "u2netp_int8.onnx"]


def test_cached_file_is_not_rebuilt(tmp_path: Path, fake_build: list[int]) -> None:
    quantize.ensure(NAME, tmp_path)
    quantize.ensure(NAME, tmp_path)
    assert fake_build == [1]


def test_corrupt_file_is_rebuilt(tmp_path: Path, fake_build: list[int]) -> None:
    (tmp_path / "u2netp_int8.onnx").write_bytes(b"corrupt")
    model = quantize.ensure(NAME, tmp_path)
    assert model.path.read_bytes() == FAKE and fake_build == [1]


def test_a_build_that_differs_is_refused_naming_what_made_it(
    tmp_path: Path, fake_build: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MODELS, NAME, replace(MODELS[NAME], sha256="0" * 64))
    with pytest.raises(ModelUnavailable) as raised:
        quantize.ensure(NAME, tmp_path)
    message = raised.value.message
    assert hashlib.sha256(FAKE).hexdigest() in message and "0" * 64 in message
    assert f"ONNX Runtime {quantize.ort_version()}" in message and "'calibration': 'MinMax'" in message
    assert fake_build == [1]  # rebuilt once, not in a loop


def test_a_pinned_sha256_accepts_another_build(tmp_path: Path, fake_build: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, NAME, replace(MODELS[NAME], sha256="0" * 64))
    model = quantize.ensure(NAME, tmp_path, sha256=hashlib.sha256(FAKE).hexdigest())
    assert model.path.read_bytes() == FAKE


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(recipe: quantize.Recipe, *, source: ResolvedModel | None = None) -> bytes:
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(quantize, "build", broken)
    with pytest.raises(RuntimeError):
        quantize.ensure(NAME, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(quantize.os, "replace", fail)
    with pytest.raises(OSError):
        quantize._write_atomic(tmp_path / "u2netp_int8.onnx", FAKE)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(quantize.CACHE_ENV, raising=False)
    assert quantize.cache_dir() == Path("~/.cache/stylefleet/models").expanduser()
    assert quantize.cache_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv(quantize.CACHE_ENV, str(tmp_path / "env"))
    assert quantize.cache_dir(str(tmp_path)) == tmp_path / "env"


def test_cli_check_fails_on_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["quantize", "--check", "--cache-dir", str(tmp_path)]) == 1
    assert "run `stylefleet quantize`" in capsys.readouterr().err


def test_cli_builds_and_prints_path_and_sha(tmp_path: Path, fake_build: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["quantize", "--cache-dir", str(tmp_path)]) == 0
    assert cli_main(["quantize", "--check", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t")[:3] == [NAME, str(tmp_path / "u2netp_int8.onnx"), hashlib.sha256(FAKE).hexdigest()]


def test_cli_record_prints_the_registry_entry(
    tmp_path: Path, fake_build: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a recipe change: a fresh build, its figures measured, printed for registry.py."""
    figures = replace(MODELS[NAME].quality, iou=0.5)  # type: ignore[type-var]
    monkeypatch.setattr(quantize, "held_out_quality", lambda name, derived, folder, **_: figures)
    (tmp_path / "u2netp_int8.onnx").write_bytes(FAKE)  # already there: --record builds anyway
    assert cli_main(["quantize", "--record", str(tmp_path), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert fake_build == [1]
    assert f"sha256={hashlib.sha256(FAKE).hexdigest()!r}" in out and "quality=Quality(iou=0.5," in out
    assert "gate: IoU 0.5 < 0.98" in out
