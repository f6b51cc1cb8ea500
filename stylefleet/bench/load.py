"""What the benchmarks share: a case (a style on its deployment) and a bounded HTTP load.

Apart from ``stylefleet.bench.served`` so that ``stylefleet.bench.rembg`` can use them without importing the
benchmark that drives it (an import circle).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np


@dataclass(frozen=True)
class Case:
    style: str  # served style name
    deployment: str
    params: dict[str, Any]  # the style's fixed params: what the bare runs pass the model
    files: tuple[str, ...]
    fields: tuple[tuple[str, str], ...] = ()  # what a client sends (a style's fixed params are not its to send)


def steady_rate(done_at: list[float], concurrency: int) -> float | None:
    """Completions per second while every one of ``concurrency`` clients had a request out.

    A closed-loop run starts with all clients sending at once and ends draining: the last
    ``concurrency`` requests finish with fewer and fewer others beside them, so a batching server
    runs part-empty batches there that a saturated one never does. Use only the completions from
    the ``concurrency``-th to the ``concurrency``-th from last, and take the rate as the slope of
    completion count over time (a least-squares line), so that a batch's results arriving in a
    burst do not weigh on where the window starts or ends. None when the run had fewer than three
    rounds of ``concurrency`` requests.
    """
    times = np.sort(np.asarray(done_at, dtype=float))
    if concurrency < 1 or len(times) < 3 * concurrency:
        return None
    window = times[concurrency - 1 : len(times) - concurrency + 1]
    if window[-1] <= window[0]:
        return None
    slope = np.polyfit(window, np.arange(len(window), dtype=float), 1)[0]
    return float(slope)


class Load:
    """A bounded closed-loop load: ``concurrency`` clients, ``total`` requests, ``cap_s`` seconds."""

    def __init__(self, url: str, path: str, files: dict[str, tuple[str, bytes, str]], data: dict[str, Any]) -> None:
        self.url, self.path, self.files, self.data = url, path, files, data

    async def run(self, concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        done_at: list[float] = []  # completion times of every answered request, errors too
        errors = 0
        deadline = time.monotonic() + cap_s
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=300, limits=limits) as client:

            async def one() -> None:
                nonlocal errors
                async with sem:
                    if time.monotonic() > deadline:
                        return
                    t0 = time.perf_counter()
                    r = await client.post(self.path, files=self.files, data=self.data)
                    done_at.append(time.perf_counter())
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(total)))
            wall = time.perf_counter() - t0
        q = np.percentile(latencies, [50, 95]) if latencies else [float("nan")] * 2
        steady = steady_rate(done_at, concurrency) if not errors else None
        return {
            "concurrency": concurrency,
            "requests": len(latencies) + errors,
            "errors": errors,
            "wall_s": round(wall, 2),
            "ips": round(len(latencies) / wall, 2),
            # while all clients had a request out (no ramp, no drain): the saturated rate
            "steady_ips": round(steady, 2) if steady is not None else None,
            "p50_ms": round(float(q[0]) * 1000, 1),
            "p95_ms": round(float(q[1]) * 1000, 1),
        }


def balanced_order(count: int, rounds: int) -> list[tuple[int, int]]:
    """(round, item) for ``rounds`` passes over items ``0..count-1``, every other pass reversed:
    0 1 2, 2 1 0, 0 1 2, ...

    A single pass in a fixed order lets the host's drift over minutes pick a winner: in sessions
    22-24 the queue comparison's first row led it in three runs, and alternated on one replica the
    lead was gone. Reversing each other pass gives every item the same mean position over an even
    number of passes (an odd one leaves the last pass's order as a small bias).
    """
    if count < 1 or rounds < 1:
        raise ValueError("balanced_order needs at least one item and one round")
    order: list[tuple[int, int]] = []
    for r in range(rounds):
        items = range(count) if r % 2 == 0 else range(count - 1, -1, -1)
        order.extend((r, i) for i in items)
    return order


def median_of_rounds(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Each of ``keys`` as the median over the rounds that have it (None where none has it)."""
    if not rows:
        raise ValueError("median_of_rounds needs at least one round")
    out: dict[str, Any] = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def in_turns(bare: Callable[[], float], served: Callable[[], float], rounds: int) -> dict[str, Any]:
    """served/bare with the two taken in turns: bare, served, bare, ..., bare.

    A shared machine's speed drifts by a third over minutes, so a served rate taken minutes after
    the bare sweep says as much about the host as about the server. Here each served rate is
    divided by the mean of the bare rates just before and just after it, so drift that is steady
    over one turn hits both sides alike; the figure is the median over the rounds.
    """
    if rounds < 1:
        raise ValueError("in_turns needs at least one round")
    bares, serveds = [bare()], []
    for _ in range(rounds):
        serveds.append(served())
        bares.append(bare())
    ratios = [s / ((before + after) / 2) for s, before, after in zip(serveds, bares, bares[1:], strict=False)]
    return {
        "bare_ips": [round(b, 2) for b in bares],
        "served_ips": [round(s, 2) for s in serveds],
        "ratios": [round(r, 3) for r in ratios],
        "served_over_bare_fastest": round(statistics.median(ratios), 2),
    }
