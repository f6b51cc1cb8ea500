"""A lone request on every core: the second, wider session of each ONNX network, and when a
replica builds one. Same bytes either way; which session runs is the caller's context."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stylefleet.config import ModelSpec
from stylefleet.deployments import loader
from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, run_batch
from stylefleet.deployments.onnx_session import Network, RuntimeOptions, make_network, run, running_alone, with_symbolic_batch
from stylefleet.deployments.queue import runs_alone
from stylefleet.deployments.registry import resolve
from stylefleet.deployments.restyle import ArbitraryStyleModel
from stylefleet.deployments.stylize import MultiStyleModel
from tests import samples

WIDE = RuntimeOptions(device="cpu", threads=1, lone_call_threads=2)


class _Recording:
    """A stand-in session that records which one ran (the real ones are tested below)."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def run(self, outputs: Any, feeds: dict[str, np.ndarray], *options: Any) -> list[np.ndarray]:
        self.calls.append(self.name)
        return [np.zeros(1)]


def test_run_takes_the_lone_session_only_inside_running_alone() -> None:
    calls: list[str] = []
    network = Network((_Recording("narrow", calls),), _Recording("lone", calls))  # type: ignore[arg-type]
    run(network, {})
    with running_alone():
        run(network, {})
    with running_alone(False):
        run(network, {})
    run(network, {})
    assert calls == ["narrow", "lone", "narrow", "narrow"]


def test_without_a_lone_session_running_alone_uses_the_only_one() -> None:
    calls: list[str] = []
    with running_alone():
        run(Network((_Recording("narrow", calls),)), {})  # type: ignore[arg-type]
    assert calls == ["narrow"]


def test_make_network_builds_the_lone_session_only_when_it_has_more_threads() -> None:
    data = with_symbolic_batch(resolve("u2netp").path)
    assert make_network(data, WIDE).lone is not None
    assert make_network(data, RuntimeOptions(threads=2, lone_call_threads=2)).lone is None
    assert make_network(data, RuntimeOptions(threads=1)).lone is None


@pytest.fixture(scope="module")
def wide_models() -> dict[str, Any]:
    return {
        "multistyle": MultiStyleModel(resolve("multistyle26"), WIDE),
        "arbitrary": ArbitraryStyleModel(resolve("arbitrary_predict"), resolve("arbitrary_transform"), WIDE),
        "u2net": U2NetModel(resolve("u2netp"), WIDE),
    }


@pytest.mark.parametrize("which", ["multistyle", "arbitrary", "u2net"])
def test_the_lone_session_gives_the_same_bytes(which: str, wide_models: dict[str, Any]) -> None:
    model = wide_models[which]
    images = {"image": samples.astronaut()}
    if which == "arbitrary":
        images["style_image"] = samples.cat()
    request = ModelRequest(images, {"style": "7"} if which == "multistyle" else {}, OutputSpec("png"))
    narrow = encode_outcomes([request], run_batch(model, [request]), "x")[0]
    with running_alone():
        alone = encode_outcomes([request], run_batch(model, [request]), "x")[0]
    assert alone.data == narrow.data  # type: ignore[union-attr]


def _spec(**fields: Any) -> ModelSpec:
    return ModelSpec(deployment="d", **{"model": "u2netp", **fields})


@pytest.mark.parametrize(
    ("fields", "cores", "expected"),
    [
        ({}, 2, 2),  # the default: model_calls (cores / threads = 2) x 1 thread
        ({}, 8, 8),
        ({}, 1, None),  # one core: nothing wider than one call
        ({"model_calls": 1}, 8, None),  # one call at a time: its threads are all it was sized for
        ({"model_calls": 3}, 8, 3),
        ({"model_calls": 4}, 2, 2),  # never above the cores
        ({"threads": 2}, 8, 8),  # model_calls 4 x 2 threads
        ({"lone_call": False}, 8, None),  # turned off
        ({"lone_call": False, "model_calls": 3}, 8, None),
        ({"model": "haar-face"}, 8, None),  # OpenCV, not an ONNX session
        ({"model": "multistyle26", "device": "cuda", "num_gpus": 1}, 8, None),
    ],
)
def test_lone_call_threads(fields: dict[str, Any], cores: int, expected: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "available_cores", lambda: cores)
    assert loader.runtime_options(_spec(**fields)).lone_call_threads == expected


def test_model_calls_default_is_the_cores_over_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "available_cores", lambda: 8)
    assert loader.model_calls(_spec()) == 8
    assert loader.model_calls(_spec(threads=2)) == 4
    assert loader.model_calls(_spec(model_calls=3)) == 3
    assert loader.model_calls(_spec(model="haar-face")) == 1


@pytest.mark.parametrize(
    ("batch_size", "in_flight", "queued", "alone"),
    [
        (1, 0, 0, True),
        (2, 0, 0, False),  # a batch: its arena would be a batch's on the second session too
        (1, 1, 0, False),  # another call holds a core
        (1, 0, 1, False),  # a request waits: it gets the other core as its own call
    ],
)
def test_only_a_lone_request_on_an_idle_replica_runs_alone(batch_size: int, in_flight: int, queued: int, alone: bool) -> None:
    assert runs_alone(batch_size, in_flight, queued) is alone
