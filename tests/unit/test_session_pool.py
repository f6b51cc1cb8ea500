"""One session per call: no two network calls share a session (and so an arena), and a replica
warms every batch size on every session before its first request (onnx_session's docstring)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from stylefleet.config import ModelSpec
from stylefleet.deployments import background, loader, restyle, stylize
from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.onnx_session import (
    WARM_PASSES,
    Network,
    RuntimeOptions,
    make_network,
    run,
    running_alone,
    warm,
    with_symbolic_batch,
)
from stylefleet.deployments.registry import resolve
from stylefleet.deployments.restyle import ArbitraryStyleModel
from stylefleet.deployments.stylize import WARM_SIDE, MultiStyleModel

WAIT_S = 10.0  # bounds every wait below; a pass never comes near it


class _Session:
    """A stand-in session that records its calls and how many run in it at once."""

    def __init__(self, name: str, log: list[tuple[str, int]], gate: threading.Event | None = None) -> None:
        self.name, self.log, self.gate = name, log, gate
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def run(self, outputs: Any, feeds: dict[str, np.ndarray], *options: Any) -> list[np.ndarray]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.log.append((self.name, len(feeds.get("x", np.zeros(0)))))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        with self._lock:
            self.inside -= 1
        return [np.zeros(1)]


def _in_thread(network: Network, alone: bool = False) -> threading.Thread:
    def call() -> None:
        with running_alone(alone):
            run(network, {"x": np.zeros(1)})

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_two_calls_at_once_run_on_two_sessions() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    a, b = _Session("a", log, gate), _Session("b", log, gate)
    network = Network((a, b))  # type: ignore[arg-type]
    threads = [_in_thread(network), _in_thread(network)]
    assert a.entered.wait(WAIT_S) and b.entered.wait(WAIT_S), "both calls run at once, one in each session"
    gate.set()
    for t in threads:
        t.join(WAIT_S)
    assert (a.most_inside, b.most_inside) == (1, 1)


def test_a_call_waits_for_a_free_session_rather_than_share_one() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    only = _Session("only", log, gate)
    network = Network((only,))  # type: ignore[arg-type]
    first = _in_thread(network)
    assert only.entered.wait(WAIT_S)
    second = _in_thread(network)
    second.join(0.2)
    assert second.is_alive() and only.inside == 1, "the second call waits while the first holds the session"
    gate.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert only.most_inside == 1 and [name for name, _ in log] == ["only", "only"]


def test_a_lone_call_takes_the_pool_when_the_lone_session_is_busy() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    pooled, lone = _Session("pooled", log), _Session("lone", log, gate)
    network = Network((pooled,), lone)  # type: ignore[arg-type]
    first = _in_thread(network, alone=True)
    assert lone.entered.wait(WAIT_S)
    with running_alone():
        run(network, {"x": np.zeros(1)})
    gate.set()
    first.join(WAIT_S)
    assert [name for name, _ in log] == ["lone", "pooled"] and lone.most_inside == 1


def test_warm_runs_every_size_on_every_session_largest_first_then_gives_them_back() -> None:
    log: list[tuple[str, int]] = []
    a, b, lone = _Session("a", log), _Session("b", log), _Session("lone", log)
    network = Network((a, b), lone)  # type: ignore[arg-type]
    warm(network, lambda n: {"x": np.zeros(n)}, [1, 3, 2])
    for name in ("a", "b"):
        assert [n for s, n in log if s == name] == [3, 2, 1] * WARM_PASSES
    assert [n for s, n in log if s == "lone"] == [1] * WARM_PASSES
    threads = [_in_thread(network), _in_thread(network)]
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "both sessions are back in the pool"


def test_make_network_builds_one_session_per_call() -> None:
    data = with_symbolic_batch(resolve("u2netp").path)
    network = make_network(data, RuntimeOptions(threads=1, calls=2))
    assert len(network.sessions) == 2 and network.sessions[0] is not network.sessions[1]
    assert len(make_network(data, RuntimeOptions(threads=1)).sessions) == 1


def test_every_session_gives_the_same_bytes() -> None:
    network = make_network(with_symbolic_batch(resolve("u2netp").path), RuntimeOptions(threads=1, calls=2))
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    name = network.get_inputs()[0].name
    first, second = (session.run(None, {name: x})[0] for session in network.sessions)
    assert first.tobytes() == second.tobytes()


def _spec(**fields: Any) -> ModelSpec:
    return ModelSpec(deployment="d", **{"model": "u2netp", **fields})


@pytest.mark.parametrize(
    ("fields", "cores", "calls"),
    [
        ({}, 2, 2),  # the CPU default: one one-thread call per core
        ({"threads": 2}, 8, 4),
        ({"model_calls": 1}, 8, 1),
        ({"model": "haar-face"}, 8, 1),
        ({"model": "multistyle26", "device": "cuda", "num_gpus": 1}, 8, 1),
    ],
)
def test_a_replica_has_a_session_for_each_call_it_runs_at_once(
    fields: dict[str, Any], cores: int, calls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "available_cores", lambda: cores)
    assert loader.runtime_options(_spec(**fields)).calls == calls


@pytest.mark.parametrize(
    ("max_batch_size", "budget", "sizes"),
    [
        (4, 8 * 512 * 512, [1, 2, 3, 4]),  # the shipped stylize: max_batch_size decides
        (8, 2 * 512 * 512, [1, 2]),  # the budget decides
        (3, None, [1, 2, 3]),
        (4, 100, [1]),  # a budget below one square still warms a batch of one
    ],
)
def test_stylize_warms_the_sizes_the_budget_lets_through(
    max_batch_size: int, budget: int | None, sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    def recording(network: Network, feeds_of: Any, batch_sizes: Any) -> None:
        seen.extend(feeds_of(n)["image"].shape for n in batch_sizes)

    monkeypatch.setattr(stylize, "warm", recording)
    model = MultiStyleModel(resolve("multistyle26"), RuntimeOptions(threads=1))
    model.warm_up(max_batch_size, budget)
    assert seen == [(n, 3, WARM_SIDE, WARM_SIDE) for n in sizes]


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    options = RuntimeOptions(threads=1)
    return {
        "multistyle": MultiStyleModel(resolve("multistyle26"), options),
        "arbitrary": ArbitraryStyleModel(resolve("arbitrary_predict"), resolve("arbitrary_transform"), options),
        "u2net": U2NetModel(resolve("u2netp"), options),
    }


@pytest.mark.parametrize("which", ["multistyle", "arbitrary", "u2net"])
def test_each_onnx_model_warms_up_on_its_real_networks(which: str, models: dict[str, Any]) -> None:
    """The feeds fit the real networks' inputs (a wrong shape raises in ONNX Runtime)."""
    models[which].warm_up(2, 2 * 512 * 512)


@pytest.mark.parametrize(("module", "networks"), [(restyle, 2), (background, 1)])
def test_fixed_size_networks_warm_up_to_max_batch_size_whatever_the_budget(
    module: Any, networks: int, models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[int]] = []
    monkeypatch.setattr(module, "warm", lambda network, feeds_of, sizes: seen.append(list(sizes)))
    models["arbitrary" if module is restyle else "u2net"].warm_up(3, 1)
    assert seen == [[1, 2, 3]] * networks


@pytest.mark.parametrize(
    ("fields", "patterns"),
    [
        ({"model": "multistyle26"}, False),  # measured: faster and less than half the memory without
        ({"model": "arbitrary"}, False),
        ({"model": "u2netp"}, False),  # measured: 0.87x without, in about half the memory
        ({"model": "multistyle26", "device": "cuda", "num_gpus": 1}, True),  # not measured on a GPU: as before
    ],
)
def test_memory_patterns_follow_the_kind_on_cpu(fields: dict[str, Any], patterns: bool) -> None:
    assert loader.runtime_options(_spec(**fields)).mem_pattern is patterns


@pytest.mark.parametrize("name", ["multistyle26", "arbitrary_transform", "u2netp"])
def test_memory_patterns_off_gives_the_same_bytes(name: str) -> None:
    data = with_symbolic_batch(resolve(name).path)
    rng = np.random.default_rng(0)
    on, off = (make_network(data, RuntimeOptions(threads=1, mem_pattern=p)) for p in (True, False))
    if name == "multistyle26":
        feeds = {"image": rng.random((2, 3, 64, 96), dtype=np.float32), "style_weights": np.eye(26, dtype=np.float32)[3]}
    elif name == "u2netp":
        feeds = {on.get_inputs()[0].name: rng.random((2, 3, 320, 320), dtype=np.float32)}
    else:
        content, vector = (i.name for i in on.get_inputs())
        feeds = {content: rng.random((2, 384, 384, 3), dtype=np.float32), vector: rng.random((2, 1, 1, 100), dtype=np.float32)}
    assert run(on, feeds)[0].tobytes() == run(off, feeds)[0].tobytes()
