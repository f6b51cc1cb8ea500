"""BacklogQueue: batches form from the backlog when the model frees, under size and pixel budget.

The model is a fake whose calls block on events, so each test decides exactly when a batch ends;
no test sleeps to wait for a batch to form.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from stylefleet.deployments.queue import BacklogQueue, QueueLimits


class GatedModel:
    """Records every batch; each call waits until the test opens its gate."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.started = asyncio.Event()
        self.fail_next: Exception | None = None

    async def __call__(self, items: list[str]) -> Sequence[str]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.set()
        await gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return [f"done:{i}" for i in items]

    async def wait_batches(self, n: int) -> None:
        while len(self.batches) < n:
            self.started.clear()
            await self.started.wait()

    def release(self, index: int) -> None:
        self.gates[index].set()


async def settle() -> None:
    """Let every ready callback run (no wall-clock wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


def gated(clock: Callable[[], float] = time.monotonic, **limits: Any) -> tuple[GatedModel, BacklogQueue[str, str]]:
    """A gated model and a queue over it with these limits."""
    model = GatedModel()
    return model, BacklogQueue(model, QueueLimits(**limits), clock=clock)


def run(coro):  # noqa: ANN001, ANN201 - tiny helper
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_idle_model_takes_the_first_request_at_once() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=8, batch_wait_timeout_s=0.0)
        first = asyncio.ensure_future(queue.submit("a"))
        await model.wait_batches(1)
        assert model.batches == [["a"]]
        model.release(0)
        assert await first == "done:a"

    run(go())


def test_backlog_fills_the_next_batch_while_the_model_is_busy() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=4)
        first = asyncio.ensure_future(queue.submit("x"))
        await model.wait_batches(1)
        rest = [asyncio.ensure_future(queue.submit(str(i))) for i in range(6)]
        await settle()
        assert len(model.batches) == 1, "no second batch may form while the only slot is busy"
        model.release(0)
        await model.wait_batches(2)
        assert model.batches[1] == ["0", "1", "2", "3"], "the backlog, first in first out, up to max_batch_size"
        model.release(1)
        await model.wait_batches(3)
        assert model.batches[2] == ["4", "5"]
        model.release(2)
        assert [await f for f in rest] == [f"done:{i}" for i in range(6)]
        assert await first == "done:x"

    run(go())


def test_pixel_budget_closes_a_batch_and_an_oversize_image_runs_alone() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=8, max_batch_pixels=100)
        blocker = asyncio.ensure_future(queue.submit("blocker", 1))
        await model.wait_batches(1)
        futures = [
            asyncio.ensure_future(queue.submit(name, pixels))
            for name, pixels in (("a", 40), ("b", 40), ("c", 40), ("huge", 500), ("d", 10))
        ]
        await settle()
        for i in range(4):
            model.release(i)
            await model.wait_batches(i + 2)
        model.release(4)
        await asyncio.gather(blocker, *futures)
        assert model.batches[1:] == [["a", "b"], ["c"], ["huge"], ["d"]]

    run(go())


def test_wait_window_lets_an_idle_model_gather_company() -> None:
    async def go() -> None:
        now = [0.0]
        model, queue = gated(lambda: now[0], max_batch_size=3, batch_wait_timeout_s=60.0)
        futures = [asyncio.ensure_future(queue.submit("a"))]
        await settle()
        assert model.batches == [], "inside the window, an unfilled batch waits"
        futures += [asyncio.ensure_future(queue.submit(x)) for x in ("b", "c")]
        await model.wait_batches(1)
        assert model.batches == [["a", "b", "c"]], "a full batch goes before the window ends"
        model.release(0)
        await asyncio.gather(*futures)

    run(go())


def test_cancelled_request_is_never_computed() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=8)
        first = asyncio.ensure_future(queue.submit("first"))
        await model.wait_batches(1)
        gone = asyncio.ensure_future(queue.submit("gone"))
        kept = asyncio.ensure_future(queue.submit("kept"))
        await settle()
        gone.cancel()
        await settle()
        model.release(0)
        await model.wait_batches(2)
        assert model.batches[1] == ["kept"]
        model.release(1)
        assert await kept == "done:kept"
        await first

    run(go())


def test_a_raising_batch_fails_its_own_items_and_the_queue_goes_on() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=8)
        model.fail_next = RuntimeError("boom")
        doomed = asyncio.ensure_future(queue.submit("doomed"))
        await model.wait_batches(1)
        model.release(0)
        with pytest.raises(RuntimeError, match="boom"):
            await doomed
        after = asyncio.ensure_future(queue.submit("after"))
        await model.wait_batches(2)
        model.release(1)
        assert await after == "done:after"

    run(go())


def test_concurrent_batches_up_to_the_limit() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=1, max_concurrent_batches=2)
        futures = [asyncio.ensure_future(queue.submit(x)) for x in "abc"]
        await model.wait_batches(2)
        await settle()
        assert model.batches == [["a"], ["b"]], "two slots: two batches at once, the third waits"
        model.release(0)
        await model.wait_batches(3)
        model.release(1)
        model.release(2)
        assert [await f for f in futures] == ["done:a", "done:b", "done:c"]

    run(go())


def test_reconfigured_size_applies_to_the_next_batch() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=8)
        first = asyncio.ensure_future(queue.submit("first"))
        await model.wait_batches(1)
        rest = [asyncio.ensure_future(queue.submit(str(i))) for i in range(4)]
        await settle()
        queue.configure(QueueLimits(max_batch_size=2))
        model.release(0)
        await model.wait_batches(2)
        assert model.batches[1] == ["0", "1"]
        model.release(1)
        await model.wait_batches(3)
        model.release(2)
        await asyncio.gather(first, *rest)

    run(go())


@pytest.mark.parametrize(
    "limits",
    [dict(max_batch_size=0), dict(max_batch_pixels=0), dict(batch_wait_timeout_s=-1), dict(max_concurrent_batches=0)],
    ids=["size", "pixels", "wait", "concurrency"],
)
def test_bad_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QueueLimits(**limits)  # type: ignore[arg-type]


def test_weighted_requests_fill_max_batch_size_by_weight() -> None:
    async def go() -> None:
        model, queue = gated(max_batch_size=4)
        blocker = asyncio.ensure_future(queue.submit("blocker"))
        await model.wait_batches(1)
        sizes = (("a", 1), ("b", 2), ("c", 2), ("huge", 9), ("d", 1))
        futures = [asyncio.ensure_future(queue.submit(name, size=size)) for name, size in sizes]
        await settle()
        for i in range(4):
            model.release(i)
            await model.wait_batches(i + 2)
        model.release(4)
        await asyncio.gather(blocker, *futures)
        # a+b = 3 fits 4, +c would be 5; huge (9) is over the limit and runs alone, then d.
        assert model.batches[1:] == [["a", "b"], ["c"], ["huge"], ["d"]]

    run(go())
