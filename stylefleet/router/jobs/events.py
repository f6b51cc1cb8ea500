"""A job's progress as server-sent events: ``progress`` (the GET JSON, items included, so a page
can show each item as it ends) on every change, ``end`` at a final status.

The stream ends itself after ``EVENTS_STREAM_S``, below Serve's default ``request_timeout_s``
(120); EventSource reconnects. While another replica runs the job, its ``state.json`` is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from stylefleet.router.jobs.store import FINAL

EVENTS_STREAM_S = 90.0
EVENTS_KEEPALIVE_S = 15.0
POLL_S = 0.5  # another replica runs the job: how often its state file is read


def min_gap_s(total_items: int) -> float:
    """Bursts are coalesced: 50 ms, up to 1 s for a 10,000-item job (~1 MB/event)."""
    return max(0.05, total_items / 10_000)


async def stream(
    get_state: Callable[[], Awaitable[dict[str, Any]]],
    changed: Callable[[], asyncio.Event | None],
    min_gap_s: float,
) -> AsyncIterator[str]:
    """The event stream. ``get_state``: the job as GET shows it; ``changed``: an event set at the
    job's next change when this replica runs it, else None."""
    yield "retry: 1000\n\n"
    deadline = time.monotonic() + EVENTS_STREAM_S
    last: dict[str, Any] | None = None
    quiet_since = time.monotonic()
    while True:
        event = changed()
        state = await get_state()
        if state != last:
            yield sse("progress", state)
            last, quiet_since = state, time.monotonic()
        if state["status"] in FINAL:
            yield sse("end", state)
            return
        if time.monotonic() > deadline:
            return
        if time.monotonic() - quiet_since > EVENTS_KEEPALIVE_S:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        if event is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=1.0)
            await asyncio.sleep(min_gap_s)
        else:
            await asyncio.sleep(POLL_S)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
