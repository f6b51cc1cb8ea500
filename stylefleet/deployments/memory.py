"""Memory-aware batching for the torch models: weigh, chunk, halve on out-of-memory. Pure.

A group of requests that may share a network call is run in chunks whose total weight stays
under the current limit. When a chunk runs out of GPU memory it is split in half and each half
retried, down to single requests; the limit is lowered to half the weight that failed and
stays there for ``cooldown_s`` (other processes may hold memory for a while), then goes back
to the configured value. On GPU, the largest batch that fits can be probed at start-up and
becomes a ceiling.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stylefleet.deployments.log import serve_logger
from stylefleet.errors import Overloaded

logger = serve_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (and MPS) out-of-memory errors, however torch raises them."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class BatchLimiter:
    """The effective batch limit, in weight units: configured, probed and lowered after OOM."""

    configured: int
    cooldown_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    probed: int | None = None
    lowered: int | None = None
    lowered_until: float = 0.0
    oom_total: int = 0
    history: list[tuple[float, int, int]] = field(default_factory=list)  # (when, failed weight, new limit)

    @property
    def limit(self) -> int:
        limit = self.configured
        if self.probed is not None:
            limit = min(limit, self.probed)
        if self.lowered is not None:
            if self.clock() < self.lowered_until:
                limit = min(limit, self.lowered)
            else:
                logger.info("batch limit back to %d after the out-of-memory cool-down", limit)
                self.lowered = None
        return max(1, limit)

    def record_oom(self, failed_weight: int) -> int:
        """A call of ``failed_weight`` ran out of memory: halve the limit for a while."""
        new_limit = max(1, min(self.limit, failed_weight) // 2)
        self.lowered = new_limit
        self.lowered_until = self.clock() + self.cooldown_s
        self.oom_total += 1
        self.history = [*self.history[-31:], (time.time(), failed_weight, new_limit)]
        logger.warning(
            "out of GPU memory on a call of weight %d: split in half and retried; batch limit %d for %.0fs",
            failed_weight, new_limit, self.cooldown_s,
        )
        return new_limit

    def info(self) -> dict[str, Any]:
        return {
            "effective_max_batch_weight": self.limit,
            "configured_max_batch_weight": self.configured,
            "probed_max_batch_weight": self.probed,
            "oom_total": self.oom_total,
            "oom_history": [list(h) for h in self.history],
        }


def chunks(items: Sequence[T], limit: int, weight: Callable[[T], int]) -> list[list[T]]:
    """Consecutive chunks of total weight <= limit (an item heavier than the limit goes alone)."""
    out: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        w = weight(item)
        if current and total + w > limit:
            out.append(current)
            current, total = [], 0
        current.append(item)
        total += w
    if current:
        out.append(current)
    return out


def run_halving(
    items: Sequence[T],
    call: Callable[[Sequence[T]], Sequence[R]],
    limiter: BatchLimiter,
    weight: Callable[[T], int],
) -> list[R]:
    """``call`` on chunks under the limit; a chunk that runs out of memory is halved and retried.

    Results come back in the order of ``items``. A single item that does not fit raises
    Overloaded (503, retry later): memory may be free again once other work finishes.
    """
    results: list[R] = []
    for chunk in chunks(items, limiter.limit, weight):
        results.extend(_halving(chunk, call, limiter, weight))
    return results


def _halving(
    chunk: Sequence[T],
    call: Callable[[Sequence[T]], Sequence[R]],
    limiter: BatchLimiter,
    weight: Callable[[T], int],
) -> list[R]:
    try:
        return list(call(chunk))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release_cached_memory()
        if len(chunk) == 1:
            raise Overloaded(
                "out of GPU memory for a single image of this size; retry later or use a smaller size", retry_after_s=5
            ) from None
        limiter.record_oom(sum(weight(item) for item in chunk))
    middle = len(chunk) // 2
    return _halving(chunk[:middle], call, limiter, weight) + _halving(chunk[middle:], call, limiter, weight)


def probe_largest_batch(try_batch: Callable[[int], None], upper: int) -> int:
    """The largest n <= upper for which ``try_batch(n)`` does not run out of memory (0: not even 1).

    Doubles until a failure, then bisects between the last success and the first failure.
    """
    good, bad = 0, upper + 1  # fits at good; fails at bad (upper + 1: not tried, out of bounds)
    n = 1
    while n <= upper:
        if not _fits(try_batch, n):
            bad = n
            break
        good = n
        n *= 2
    while bad - good > 1:
        middle = (good + bad) // 2
        if _fits(try_batch, middle):
            good = middle
        else:
            bad = middle
    return good


def _fits(try_batch: Callable[[int], None], n: int) -> bool:
    try:
        try_batch(n)
        return True
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release_cached_memory()
        return False


def weight_of(pixels: int, steps: int, unit_pixel_steps: int) -> int:
    """A request's weight in batch units: pixels x steps over the unit, at least 1."""
    return max(1, math.ceil(pixels * steps / unit_pixel_steps))


# Set for the duration of a call heavier than the pixel budget: ONNX Runtime sessions then hand
# their arena's free chunks back at the end of that call (``onnx_session.run``). A context
# variable, so only the thread running that batch sees it.
_release_arena: contextvars.ContextVar[bool] = contextvars.ContextVar("stylefleet_release_arena", default=False)


@contextmanager
def releasing_arena() -> Iterator[None]:
    """Within this block, every ONNX Runtime call gives its arena's free memory back when it ends."""
    token = _release_arena.set(True)
    try:
        yield
    finally:
        _release_arena.reset(token)


def arena_release_requested() -> bool:
    return _release_arena.get()
