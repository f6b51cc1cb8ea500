"""``ServeBatchQueue``: the ``BatchQueue`` (``stylefleet.deployments.queue``) over Ray Serve's
``@serve.batch``, for ``queue: serve-batch``. It needs a Serve replica, so it lives in the glue.

Serve forms the next batch while earlier ones run: it collects what arrives within
``batch_wait_timeout_s`` of the batch's first request, then the batch waits for one of
``max_concurrent_batches`` slots. So batch size follows arrival rate x wait, not the backlog
(docs/batching.md); ``BacklogQueue`` is the default for that reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from ray import serve

from stylefleet.deployments.queue import QueueLimits

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Entry(Generic[T]):
    item: T
    size: int
    state: Literal["queued", "started", "gone"] = "queued"  # gone: its caller left before its batch began


class ServeBatchQueue(Generic[T, R]):
    """``await queue.submit(item, pixels, size)`` returns ``run``'s result for that item.

    ``size`` weighs against ``max_batch_size`` (capped at it: Serve fails an item heavier than
    the whole batch outright, where the backlog queue runs it alone); ``pixels`` is not weighed
    here (the replica splits a batch over its pixel budget when it runs it).
    ``max_concurrent_batches`` is fixed when the queue is built (Serve's decorator takes it once).
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], limits: QueueLimits | None = None) -> None:
        self._run = run
        self.limits = limits or QueueLimits()
        self._queued = 0
        self._running = 0

        async def handle_batch(entries: list[_Entry[T]]) -> list[R]:
            return await self._run_entries(entries)

        # Any: the decorator adds its setters to the function it returns, which its type does not say.
        self._batched: Any = serve.batch(
            max_batch_size=self.limits.max_batch_size,
            batch_wait_timeout_s=self.limits.batch_wait_timeout_s,
            max_concurrent_batches=self.limits.max_concurrent_batches,
            batch_size_fn=self._weight,
        )(handle_batch)

    def configure(self, limits: QueueLimits) -> None:
        """New size and wait apply from the next batch formed."""
        self.limits = limits
        self._batched.set_max_batch_size(limits.max_batch_size)
        self._batched.set_batch_wait_timeout_s(limits.batch_wait_timeout_s)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    async def submit(self, item: T, pixels: int = 0, size: int = 1) -> R:
        entry = _Entry(item, max(1, size))
        self._queued += 1
        try:
            return await self._batched(entry)
        finally:
            if entry.state == "queued":
                entry.state = "gone"
                self._queued -= 1

    def _weight(self, entries: list[_Entry[T]]) -> int:
        return sum(min(entry.size, self.limits.max_batch_size) for entry in entries)

    async def _run_entries(self, entries: list[_Entry[T]]) -> list[R]:
        for entry in entries:
            if entry.state == "queued":
                entry.state = "started"
                self._queued -= 1
        self._running += 1
        try:
            return list(await self._run([entry.item for entry in entries]))
        finally:
            self._running -= 1
