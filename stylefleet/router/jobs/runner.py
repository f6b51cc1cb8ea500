"""Running a job's items: each through ``RouterCore.handle`` (the same validation, A/B choice,
deployment handles, batching and metrics as online requests), retried by the one retry policy
(``stylefleet.retry``) while the deployments answer with a retryable error.

At most ``max_in_flight_per_job`` items of a job are in flight, so online traffic keeps the rest
of each deployment's queue. Items with a result are never run again; an item's result is written
after its output, and ``state.json`` after the results, so progress never seems to go backwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stylefleet.config import JobsConfig
from stylefleet.deployments.log import serve_logger
from stylefleet.errors import StylefleetError
from stylefleet.manifest import Record, now_iso
from stylefleet.retry import RetryPolicy
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs.store import JobSpec, JobStore, describe, item_params

logger = serve_logger(__name__)

STATE_WRITE_INTERVAL_S = 1.0


@dataclass
class RunningJob:
    """A job this replica is running."""

    spec: JobSpec
    results: dict[int, Record]
    status: str = "queued"
    started_at: str | None = None
    finished_at: str | None = None
    shared_files: dict[str, bytes] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    saved_at: float = 0.0
    renewed_at: float = 0.0
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # state.json snapshots land in order
    saved: dict[str, Any] | None = None  # the last state.json written: what every replica shows

    def touch(self) -> None:
        """Wake whoever waits on ``changed`` (the event streams)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        return describe(self.spec, self.results, self.status, self.started_at, self.finished_at)


async def save_state(store: JobStore, job: RunningJob) -> None:
    """Write ``state.json``. Snapshots are taken and written one at a time: two writes in flight
    could land out of order, and an older snapshot over a newer one is progress going backwards."""
    async with job.save_lock:
        job.saved_at = time.monotonic()
        state = job.describe()
        await asyncio.to_thread(store.write_state, job.spec.id, state)
        job.saved = state
        job.touch()


class Runner:
    """Runs the items of the jobs this replica holds."""

    def __init__(self, core: RouterCore, store: JobStore, config: JobsConfig, rng: random.Random | None = None) -> None:
        self.core = core
        self.store = store
        self.config = config
        self.policy = RetryPolicy(retries=config.item_retries)
        self.rng = rng or random.Random()

    async def run(self, job: RunningJob) -> tuple[str, Exception | None]:
        """Run the job's pending items; the final status and, when storage failed under the job,
        why. Cancelled (shutdown, cancel, lease lost): raises, and whoever stopped it records the state."""
        job.status = "running"
        job.started_at = job.started_at or now_iso()
        await save_state(self.store, job)
        pending = deque(i for i in range(len(job.spec.items)) if i not in job.results)
        logger.info("job %s: running %d of %d items", job.spec.id, len(pending), len(job.spec.items))

        async def worker() -> None:
            while pending:
                i = pending.popleft()
                record = await self.process(job, i)
                await asyncio.to_thread(self.store.write_result, job.spec.id, i, record)
                job.results[i] = record
                job.touch()
                if time.monotonic() - job.saved_at >= STATE_WRITE_INTERVAL_S:
                    await save_state(self.store, job)

        try:
            workers = min(self.config.max_in_flight_per_job, len(pending))
            await asyncio.gather(*(worker() for _ in range(workers)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage failed under the job
            logger.exception("job %s failed", job.spec.id)
            return "failed", exc
        ok = any(r.status == "ok" for r in job.results.values())
        return ("succeeded" if ok else "failed"), None

    async def process(self, job: RunningJob, i: int) -> Record:
        """Item ``i``'s record: ok with its output stored, or failed with the error's code. One
        item never fails its job."""
        spec, item = job.spec, job.spec.items[i]
        started = time.perf_counter()
        if item.fields is None:
            data = await asyncio.to_thread(self.store.read_input, spec.id, i)
            files = {"image": data, **job.shared_files}
        else:
            files = dict(job.shared_files)
        fields = {**spec.fields, **(item.fields or {}), "variant": spec.variant}
        base = dict(input=item.name, input_sha256=item.sha256, style=spec.style, params=item_params(spec, item), variant=spec.variant)
        try:
            result = await self.policy.run(lambda: self.core.handle(spec.style, files, dict(fields)), rng=self.rng)
        except StylefleetError as exc:
            # out of retries, the model never ran the item: no time to report
            seconds = None if exc.retryable else round(time.perf_counter() - started, 4)
            return Record(**base, status="failed", error={"code": exc.code, "message": exc.message}, seconds=seconds)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - one item never fails its job
            logger.exception("job %s item %d", spec.id, i)
            return Record(**base, status="failed", error={"code": "internal_error", "message": "unexpected error; it was logged"})  # type: ignore[arg-type]
        await asyncio.to_thread(self.store.write_output, spec.id, item.output, result.image.data)
        return Record(
            **base,  # type: ignore[arg-type]
            status="ok", output=item.output, model_sha256=result.image.model_sha256,
            seed=result.seeds[0], nsfw=result.image.nsfw, checks=result.image.checks, seconds=round(time.perf_counter() - started, 4),
        )
