"""Memory admission for one replica: every request reserves its estimated bytes first. Pure.

A replica's memory is its idle footprint (the loaded model, its warmed arenas) plus what its
requests hold while they are decoded, queued prepared, run through the network, finished and
encoded. The pixel budget shapes one batch; it does not bound several batches at once
(``model_calls``), nor the requests decoded and waiting behind them. ``MemoryAdmission`` does:
a request reserves its estimate (``MemoryCost.of``: bytes per pixel, measured per model kind)
before it is decoded, and gives it back once its reply is encoded, so at any moment the
requests a replica holds in memory together fit its budget.

- what fits now goes at once; what could fit later waits, first in first out (a small request
  never overtakes a large one that waits, so a large one is never starved);
- at most ``max_waiting`` requests wait; one more is refused with 503 ``overloaded`` and a
  ``Retry-After``, rather than piling up;
- a request whose estimate exceeds the whole budget could never run: it is refused at once with
  413 ``image_too_large_for_memory``, whose message names the largest size the replica takes;
- a reservation is released however its request ends: result, error or cancellation (the caller
  went away while it waited, or while it ran).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from stylefleet.errors import ImageTooLargeForMemory, Overloaded

# A decoded upload before it is scaled to max_side: Pillow's 8-bit RGB(A) image, its numpy copy
# and the Lanczos-scaled result beside it (bytes per decoded pixel; stylefleet.imageio.decode).
DECODE_BYTES_PER_PIXEL = 12


@dataclass(frozen=True)
class MemoryCost:
    """What one request costs a replica in memory, by its pixels after ``max_side`` (measured per
    model kind: docs/batching.md "Memory"), plus its decoded upload before scaling.

    ``bytes_per_pixel``: the peak RSS growth of a one-image call (decode, prepare, network,
    finish, encode) per output pixel, the largest seen over the measured sizes.
    """

    bytes_per_pixel: float
    fixed_bytes: int = 0
    # (param, bytes): a fixed part more when the request sets that param (u2netp's alpha matting)
    fixed_bytes_with: tuple[str, int] | None = None

    def fixed(self, params: Mapping[str, Any] | None = None) -> int:
        if self.fixed_bytes_with is not None and params and _truthy(params.get(self.fixed_bytes_with[0])):
            return self.fixed_bytes + self.fixed_bytes_with[1]
        return self.fixed_bytes

    def of(self, pixels: int, decoded_pixels: int = 0, params: Mapping[str, Any] | None = None) -> int:
        """The estimate of a request with these params whose images have ``pixels`` after max_side
        and decode to ``decoded_pixels`` first (a JPEG decodes near its target size; other formats
        at full size)."""
        return int(self.fixed(params) + self.bytes_per_pixel * pixels + DECODE_BYTES_PER_PIXEL * decoded_pixels)

    def largest_side(self, budget_bytes: int, params: Mapping[str, Any] | None = None) -> int:
        """The longer side of the largest square image (decoded at its own size) that fits
        ``budget_bytes`` with these params."""
        room = budget_bytes - self.fixed(params)
        if room <= 0:
            return 0
        return math.isqrt(int(room / (self.bytes_per_pixel + DECODE_BYTES_PER_PIXEL)))


def _truthy(value: Any) -> bool:
    """A boolean param as a client may send it (form fields arrive as text); pydantic's spelling."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "on", "t", "y"}
    return bool(value)


@dataclass
class _Waiter:
    need: int
    future: asyncio.Future[None]


class MemoryAdmission:
    """Reservations against ``budget_bytes``; ``async with admission.reserve(need, largest_side)``."""

    def __init__(self, budget_bytes: int, *, max_waiting: int, retry_after_s: int = 1) -> None:
        if budget_bytes < 1:
            raise ValueError("budget_bytes must be positive")
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.budget_bytes = budget_bytes
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.reserved_bytes = 0
        self.peak_reserved_bytes = 0
        self.admitted_total = 0
        self.waited_total = 0
        self.refused_too_large_total = 0
        self.refused_waiting_total = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def reserve(self, need_bytes: int, largest_side: int | None = None) -> AsyncIterator[None]:
        """Hold ``need_bytes`` for the block. Raises ``ImageTooLargeForMemory`` (never fits; the
        message names ``largest_side`` when given) or ``Overloaded`` (too many waiting)."""
        await self.acquire(need_bytes, largest_side)
        try:
            yield
        finally:
            self.release(need_bytes)

    async def acquire(self, need_bytes: int, largest_side: int | None = None) -> None:
        """Reserve ``need_bytes``, waiting (FIFO) until it fits; pair with ``release``."""
        need = max(0, int(need_bytes))
        if need > self.budget_bytes:
            self.refused_too_large_total += 1
            raise ImageTooLargeForMemory(self._too_large_message(need, largest_side))
        if not self._waiting and self.reserved_bytes + need <= self.budget_bytes:
            self._take(need)
            return
        if len(self._waiting) >= self.max_waiting:
            self.refused_waiting_total += 1
            raise Overloaded(
                f"this replica's memory is taken by the requests it is running, and {len(self._waiting)} more "
                "already wait for it; retry shortly",
                retry_after_s=self.retry_after_s,
            )
        waiter = _Waiter(need, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self.waited_total += 1
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(need)  # granted just as its caller went away: give it back
            else:
                self._waiting.remove(waiter)
                self._grant()  # it may have been the head that held the others back
            raise

    def release(self, need_bytes: int) -> None:
        self.reserved_bytes -= max(0, int(need_bytes))
        if self.reserved_bytes < 0:  # pragma: no cover - a release without its acquire
            raise RuntimeError("released more memory than was reserved")
        self._grant()

    def _take(self, need: int) -> None:
        self.reserved_bytes += need
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.admitted_total += 1

    def _grant(self) -> None:
        """Wake waiters from the head while each fits: first in, first out."""
        while self._waiting and self.reserved_bytes + self._waiting[0].need <= self.budget_bytes:
            waiter = self._waiting.popleft()
            if waiter.future.done():  # cancelled: its acquire cleans up
                continue
            self._take(waiter.need)
            waiter.future.set_result(None)

    def _too_large_message(self, need: int, largest_side: int | None) -> str:
        gib = 2**30
        largest = f"; largest accepted at these settings: {largest_side}x{largest_side} px" if largest_side else ""
        return (
            f"this image needs about {need / gib:.1f} GiB of memory to process, more than the "
            f"{self.budget_bytes / gib:.1f} GiB this deployment's replicas admit (memory_budget_bytes){largest}; "
            "send a smaller image or a lower max_side"
        )

    def info(self) -> dict[str, int]:
        return {
            "memory_admission_budget_bytes": self.budget_bytes,
            "memory_reserved_bytes": self.reserved_bytes,
            "memory_peak_reserved_bytes": self.peak_reserved_bytes,
            "memory_waiting": self.waiting,
            "memory_admitted_total": self.admitted_total,
            "memory_waited_total": self.waited_total,
            "memory_refused_too_large_total": self.refused_too_large_total,
            "memory_refused_waiting_total": self.refused_waiting_total,
        }
