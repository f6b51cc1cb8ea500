"""Running a job's items: each through ``RouterCore.handle`` (the same validation, A/B choice,
deployment handles, batching and metrics as online requests), retried by the one retry policy
(``stylefleet.retry``) while the deployments answer with a retryable error.

At most ``max_in_flight_per_job`` items of a job are in flight, so online traffic keeps the rest
of each deployment's queue. Items with a result are never run again; an item's result is written
after its output, and ``state.json`` after the results, so progress never seems to go backwards.

When the job's storage cannot take a write (``InsufficientStorage``: a full disk or quota), the
item being written fails with ``insufficient_storage``, the job takes no new item, the items it
did not run fail with the same code, and the job ends ``failed`` with that error: every item says
why, and no GPU time is spent on outputs that cannot be kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from stylefleet.config import JobsConfig
from stylefleet.deployments.log import serve_logger
from stylefleet.errors import InsufficientStorage, StylefleetError
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
    error: dict[str, str] | None = None  # why the job itself failed (its storage), {"code", "message"}

    def touch(self) -> None:
        """Wake whoever waits on ``changed`` (the event streams)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        return describe(self.spec, self.results, self.status, self.started_at, self.finished_at, error=self.error)


async def save_state(store: JobStore, job: RunningJob) -> bool:
    """Write ``state.json``; False when the storage could not take it (full): the state is still
    what this replica shows (``job.saved``), and the caller keeps it to write again. Snapshots are
    taken and written one at a time: two writes in flight could land out of order, and an older
    snapshot over a newer one is progress going backwards."""
    async with job.save_lock:
        job.saved_at = time.monotonic()
        state = job.describe()
        written = True
        try:
            await asyncio.to_thread(store.write_state, job.spec.id, state)
        except InsufficientStorage as exc:
            logger.warning("job %s: state not saved: %s", job.spec.id, exc.message)
            written = False
        job.saved = state
        job.touch()
        return written


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
            while pending and job.error is None:
                i = pending.popleft()
                record = await self.process(job, i)
                record = await self._keep(job, i, record)
                job.results[i] = record
                job.touch()
                if time.monotonic() - job.saved_at >= STATE_WRITE_INTERVAL_S:
                    await save_state(self.store, job)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.config.max_in_flight_per_job, len(pending)))]
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage failed under the job
            logger.exception("job %s failed", job.spec.id)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if job.error is None:
                unexpected = {"code": "internal_error", "message": "the job's storage failed; it was logged"}
                job.error = _error(exc) if isinstance(exc, StylefleetError) else unexpected
        if job.error is not None:
            await self._fail_unrun(job)
            code, message = job.error["code"], job.error["message"]
            return "failed", InsufficientStorage(message) if code == InsufficientStorage.code else RuntimeError(message)
        ok = any(r.status == "ok" for r in job.results.values())
        return ("succeeded" if ok else "failed"), None

    async def _keep(self, job: RunningJob, i: int, record: Record) -> Record:
        """Store item ``i``'s record; the record to show. Storage full (its output, or now its
        record, could not be written): the item fails with ``insufficient_storage``, its output is
        removed, and the job stops taking items (``job.error``)."""
        if record.error is None or record.error.get("code") != InsufficientStorage.code:
            try:
                await asyncio.to_thread(self.store.write_result, job.spec.id, i, record)
                return record
            except InsufficientStorage as exc:
                if record.output:
                    await asyncio.to_thread(self.store.delete_output, job.spec.id, record.output)
                record = replace(record, status="failed", output=None, error=_error(exc))
        if job.error is None:
            logger.warning("job %s: storage cannot take item %d; the items not run fail: %s", job.spec.id, i, record.error)
            reason = (record.error or {}).get("message", "")
            job.error = {"code": InsufficientStorage.code, "message": f"the job storage cannot take more: {reason}"}
        with contextlib.suppress(InsufficientStorage):  # a record may still fit; if not, it lives in state.json
            await asyncio.to_thread(self.store.write_result, job.spec.id, i, record)
        return record

    async def _fail_unrun(self, job: RunningJob) -> None:
        """Every item without a record fails with the job's error: none is left ``pending``. The
        records are written where they still fit (the result zip's manifest lists them), and
        shown from ``state.json`` (or this replica's memory) where they do not."""
        error = job.error or {"code": "internal_error", "message": "not run"}
        for i, item in enumerate(job.spec.items):
            if i not in job.results:
                record = Record(
                    input=item.name, input_sha256=item.sha256, style=job.spec.style, params=item_params(job.spec, item),
                    status="failed", variant=job.spec.variant, error={"code": error["code"], "message": f"not run: {error['message']}"},
                )
                job.results[i] = record
                with contextlib.suppress(InsufficientStorage):
                    await asyncio.to_thread(self.store.write_result, job.spec.id, i, record)
        job.touch()

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
        try:
            await asyncio.to_thread(self.store.write_output, spec.id, item.output, result.image.data)
        except InsufficientStorage as exc:
            return Record(**base, status="failed", error=_error(exc), seconds=round(time.perf_counter() - started, 4))  # type: ignore[arg-type]
        return Record(
            **base,  # type: ignore[arg-type]
            status="ok", output=item.output, model_sha256=result.image.model_sha256,
            seed=result.seeds[0], nsfw=result.image.nsfw, checks=result.image.checks, seconds=round(time.perf_counter() - started, 4),
        )


def _error(exc: StylefleetError) -> dict[str, str]:
    return {"code": exc.code, "message": exc.message}
