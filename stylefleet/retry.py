"""One retry policy for everything that sends work to the styles: the batch CLI over HTTP
(``stylefleet.tools.batch.http``) and the router's job runner (``stylefleet.router.jobs.runner``).

What is retried is decided by the error classes (``StylefleetError.retryable``: overloaded,
model_unavailable, too_many_uploads, uploads_busy, request_timeout); an HTTP answer is judged by its error code
through the table derived from those classes, or, when it carries no stylefleet code (a proxy's
502 or 504), by its status. How long to wait: full-jitter exponential backoff, never less than the
server's ``Retry-After`` when it gives one (delta-seconds; both capped at ``cap_s``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from stylefleet.errors import ERROR_CLASSES, is_retryable

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
"""Statuses worth retrying when the answer has no stylefleet error code (it came from a proxy)."""


def retryable_answer(status: int, code: str | None) -> bool:
    """Whether an HTTP error answer is worth retrying: by its stylefleet code's class when the
    code is one of ours, else by its status."""
    cls = ERROR_CLASSES.get(code) if code is not None else None
    return cls.retryable if cls is not None else status in RETRYABLE_STATUSES


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds; None when absent or not delta-seconds (an HTTP date is not
    worth parsing here: the backoff covers it)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN: as if absent


def _retry_after_header(exc: BaseException) -> str | None:
    headers = getattr(exc, "headers", None) or {}
    return headers.get("Retry-After") or headers.get("retry-after")


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` attempts after the first, waiting ``delay_s`` before each."""

    retries: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: between half and all of ``base_s * 2**attempt`` (at most ``cap_s``), so
        clients that failed together do not come back together."""
        return rng.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2**attempt)

    def delay_s(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds before retry number ``attempt`` (0-based): the backoff, or the server's
        ``Retry-After`` when that is longer (plus up to 0.1 s of jitter)."""
        backoff = self.backoff_s(attempt, rng)
        server = retry_after_s(retry_after)
        if server is None:
            return backoff
        return max(min(self.cap_s, server), backoff) + rng.uniform(0, 0.1)

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retryable: Callable[[BaseException], bool] = is_retryable,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> T:
        """Await ``call()`` until it returns. An error ``retryable`` accepts is retried after
        ``delay_s`` (honouring the error's ``Retry-After`` header), at most ``retries`` times;
        any other error, and the last one, is raised as it is."""
        rng = rng or random.Random()
        for attempt in itertools.count():
            try:
                return await call()
            except Exception as exc:
                if attempt >= self.retries or not retryable(exc):
                    raise
                await sleep(self.delay_s(attempt, _retry_after_header(exc), rng))
        raise AssertionError("unreachable")
