"""A replica's batch queue: the next batch is taken from the backlog when the model is free. Pure.

``BatchQueue`` is what a replica's server drives, whichever queue forms its batches:
``BacklogQueue`` here (``queue: backlog``, the default), or ``ServeBatchQueue``
(``stylefleet.deployments.serve.batch_queue``, ``queue: serve-batch``) over Ray Serve's own.

Ray Serve's ``@serve.batch`` forms the next batch while the current one runs: it collects what
arrives within ``batch_wait_timeout_s`` and then waits for the model holding that partial batch,
so batch size follows arrival rate x wait, not the backlog (mean 1.4-3 of 8 at concurrency 32
here), and every request waits the full window even when the model is idle.

``BacklogQueue`` forms a batch only once a model slot is free, from everything queued by then:

- a busy model's backlog becomes its next batch, up to ``max_batch_size`` requests and
  ``max_batch_pixels`` pixels (the memory budget); the first request always goes, so one image
  above the whole budget runs alone;
- an idle model takes a request at once; ``batch_wait_timeout_s`` (default 0) lets the first
  request of a batch wait that long for company, counted from its arrival (a GPU can prefer
  that); a request that waited behind a busy model that long never waits again;
- order is first in, first out; a request whose caller went away (its future cancelled) is
  dropped before it costs compute;
- ``run`` answers one result per item, in order; if it raises, every item of that batch gets
  the exception.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class QueueLimits:
    """What closes a batch, with one meaning for every ``BatchQueue``. ``max_batch_size``: most
    weight (``size``) in one batch; ``batch_wait_timeout_s``: the longest a batch's first request
    waits, from its arrival, for others to join it (0: never); ``max_concurrent_batches``: batches
    running at once. ``max_batch_pixels`` (``None``: no pixel budget) closes a backlog batch; Ray
    Serve's queue cannot weigh pixels, and the replica splits its batches under the budget instead.
    """

    max_batch_size: int = 8
    max_batch_pixels: int | None = None
    batch_wait_timeout_s: float = 0.0
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_concurrent_batches < 1:
            raise ValueError("max_batch_size and max_concurrent_batches must be at least 1")
        if self.max_batch_pixels is not None and self.max_batch_pixels < 1:
            raise ValueError("max_batch_pixels must be positive (or None)")
        if self.batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must be >= 0")


@runtime_checkable
class BatchQueue(Protocol[T_contra, R_co]):
    """A replica's batch queue: ``await submit(item, pixels, size)`` answers the batch function's
    result for ``item``; ``configure`` applies new limits from the next batch formed; ``queued``
    counts items whose batch has not started, ``running`` batches in the batch function now."""

    async def submit(self, item: T_contra, pixels: int = 0, size: int = 1) -> R_co: ...

    def configure(self, limits: QueueLimits) -> None: ...

    @property
    def queued(self) -> int: ...

    @property
    def running(self) -> int: ...


@dataclass
class _Entry(Generic[T, R]):
    item: T
    size: int
    pixels: int
    arrived: float
    future: asyncio.Future[R]


class BacklogQueue(Generic[T, R]):
    """``await queue.submit(item, pixels)`` returns ``run``'s result for that item."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        limits: QueueLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.limits = limits or QueueLimits()
        self._clock = clock
        self._entries: deque[_Entry[T, R]] = deque()
        self._arrived = asyncio.Event()
        self._running = 0
        self._slot_free = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    def configure(self, limits: QueueLimits) -> None:
        """New limits apply from the next batch formed."""
        self.limits = limits
        self._slot_free.set()  # a higher max_concurrent_batches may free a slot now

    @property
    def queued(self) -> int:
        return len(self._entries)

    @property
    def running(self) -> int:
        return self._running

    async def submit(self, item: T, pixels: int = 0, size: int = 1) -> R:
        """Queue ``item``; ``pixels`` counts against max_batch_pixels, ``size`` (default 1)
        against max_batch_size (a model that weighs its requests gives more)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._form_batches(), name="stylefleet-backlog-queue")
        entry: _Entry[T, R] = _Entry(item, max(1, size), max(0, pixels), self._clock(), loop.create_future())
        self._entries.append(entry)
        self._arrived.set()
        return await entry.future

    async def _form_batches(self) -> None:
        while True:
            while self._running >= self.limits.max_concurrent_batches:
                self._slot_free.clear()
                await self._slot_free.wait()
            batch = await self._next_batch()
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _next_batch(self) -> list[_Entry[T, R]]:
        while True:
            self._drop_cancelled()
            if self._entries:
                break
            self._arrived.clear()
            await self._arrived.wait()
        wait_s = self.limits.batch_wait_timeout_s
        if wait_s > 0:
            deadline = self._entries[0].arrived + wait_s
            while not self._full() and (remaining := deadline - self._clock()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._drop_cancelled()
            self._drop_cancelled()
            if not self._entries:
                return await self._next_batch()
        return self._take()

    def _full(self) -> bool:
        plan = self._take_plan()
        return len(plan) < len(self._entries) or sum(e.size for e in plan) >= self.limits.max_batch_size

    def _take_plan(self) -> list[_Entry[T, R]]:
        """The queue's head that fits one batch: size and pixel budget, the first always."""
        limits = self.limits
        taken: list[_Entry[T, R]] = []
        size = pixels = 0
        for entry in self._entries:
            if taken and size + entry.size > limits.max_batch_size:
                break
            if taken and limits.max_batch_pixels is not None and pixels + entry.pixels > limits.max_batch_pixels:
                break
            taken.append(entry)
            size += entry.size
            pixels += entry.pixels
        return taken

    def _take(self) -> list[_Entry[T, R]]:
        taken = self._take_plan()
        for _ in taken:
            self._entries.popleft()
        return taken

    def _drop_cancelled(self) -> None:
        if any(e.future.done() for e in self._entries):
            self._entries = deque(e for e in self._entries if not e.future.done())

    async def _run_batch(self, batch: list[_Entry[T, R]]) -> None:
        try:
            live = [e for e in batch if not e.future.done()]
            if not live:
                return
            try:
                results = list(await self._run([e.item for e in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
                for e in live:
                    if not e.future.done():
                        e.future.set_exception(exc)
                return
            for e, result in zip(live, results):
                if not e.future.done():
                    e.future.set_result(result)
        finally:
            self._running -= 1
            self._slot_free.set()


def runs_alone(batch_size: int, in_flight: int, queued: int) -> bool:
    """Whether a batch about to start may take every core (the lone-call session): it is one
    request, no other batch is in its network call, and nothing waits behind it. One request
    only, so the wider session's arena holds one image's activations, never a batch's."""
    return batch_size == 1 and in_flight == 0 and queued == 0
