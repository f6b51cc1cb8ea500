"""Both of a replica's batch queues behind the one ``BatchQueue`` interface the servers drive.

``ServeBatchQueue`` runs Ray Serve's own ``@serve.batch`` here, with no cluster: only the replica
context it reads once (``max_ongoing_requests``, for a warning) is stood in for.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterator
from typing import Any, get_args

import pytest
from ray import serve

from stylefleet.config import QueueKind
from stylefleet.deployments.queue import BacklogQueue, BatchQueue, QueueLimits
from stylefleet.deployments.serve.batch_queue import ServeBatchQueue
from stylefleet.deployments.serve.serving import QUEUES
from tests.unit.test_queue import GatedModel, run, settle


@pytest.fixture(autouse=True)
def replica_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    yield


Factory = Callable[..., BatchQueue[str, str]]
BOTH = pytest.mark.parametrize("make", [BacklogQueue, ServeBatchQueue], ids=["backlog", "serve-batch"])


def test_every_configured_queue_kind_has_a_batch_queue() -> None:
    assert set(QUEUES) == set(get_args(QueueKind))


@BOTH
def test_each_queue_is_a_batch_queue(make: Factory) -> None:
    async def body() -> None:
        assert isinstance(make(GatedModel(), QueueLimits()), BatchQueue)

    run(body())


async def _backlog_behind_a_busy_model(make: Factory, **limits: Any) -> tuple[GatedModel, BatchQueue[str, str], list[str]]:
    """One request keeps the model busy (one batch at a time) while three more queue one by one."""
    model = GatedModel()
    queue = make(model, QueueLimits(max_concurrent_batches=1, **limits))
    first = asyncio.ensure_future(queue.submit("a"))
    await model.wait_batches(1)
    assert (queue.running, queue.queued) == (1, 0)
    rest = []
    for name in "bcd":
        rest.append(asyncio.ensure_future(queue.submit(name)))
        await settle()
    assert (queue.running, queue.queued) == (1, 3), "queued counts what waits for its batch to start"
    while not all(f.done() for f in [first, *rest]):
        for gate in model.gates:
            gate.set()
        await settle()
    assert (queue.running, queue.queued) == (0, 0)
    return model, queue, [first.result(), *(f.result() for f in rest)]


def test_the_backlog_queue_makes_a_busy_models_backlog_its_next_batch() -> None:
    model, _, results = run(_backlog_behind_a_busy_model(BacklogQueue))
    assert results == ["done:a", "done:b", "done:c", "done:d"]
    assert model.batches == [["a"], ["b", "c", "d"]]


def test_serve_batch_forms_each_batch_while_the_model_is_busy() -> None:
    """With no wait, Serve closes a batch on each lone arrival: one request per batch (docs/batching.md)."""
    model, _, results = run(_backlog_behind_a_busy_model(ServeBatchQueue))
    assert results == ["done:a", "done:b", "done:c", "done:d"]
    assert model.batches == [["a"], ["b"], ["c"], ["d"]]


@BOTH
def test_size_fills_max_batch_size_and_an_item_heavier_than_it_runs_alone(make: Factory) -> None:
    async def body() -> list[list[str]]:
        model = GatedModel()
        queue = make(model, QueueLimits(max_batch_size=4))
        futures = [asyncio.ensure_future(queue.submit(n, size=s)) for n, s in [("x", 9), ("y", 2), ("z", 2)]]
        while not all(f.done() for f in futures):
            for gate in model.gates:
                gate.set()
            await settle()
        assert [f.result() for f in futures] == ["done:x", "done:y", "done:z"]
        return [sorted(batch) for batch in model.batches]  # Serve may reorder within a batch

    assert run(body()) == [["x"], ["y", "z"]]


@BOTH
def test_a_raising_batch_fails_its_own_items_and_configure_applies_to_the_next(make: Factory) -> None:
    async def body() -> list[list[str]]:
        model = GatedModel()
        queue = make(model, QueueLimits(max_batch_size=1, max_concurrent_batches=1))
        model.fail_next = RuntimeError("boom")
        failing = asyncio.ensure_future(queue.submit("bad"))
        await model.wait_batches(1)
        model.release(0)
        with pytest.raises(RuntimeError, match="boom"):
            await failing
        queue.configure(QueueLimits(max_batch_size=2, max_concurrent_batches=1))
        futures = [asyncio.ensure_future(queue.submit(n)) for n in ("p", "q")]
        while not all(f.done() for f in futures):
            for gate in model.gates:
                gate.set()
            await settle()
        assert [f.result() for f in futures] == ["done:p", "done:q"]
        assert (queue.running, queue.queued) == (0, 0)
        return [sorted(batch) for batch in model.batches]  # Serve may reorder within a batch

    assert run(body()) == [["bad"], ["p", "q"]]
