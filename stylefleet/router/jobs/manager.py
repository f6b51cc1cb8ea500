"""The jobs of one router replica: created (validated, stored), scheduled (claimed, resumed,
renewed, cancelled), described and ended here; stored by ``store``, held by ``lease``, run by
``runner``, streamed by ``events``, zipped by ``result``."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from stylefleet.config import JobsConfig
from stylefleet.deployments.log import serve_logger
from stylefleet.errors import InsufficientStorage, InvalidParams, InvalidPromptLine, JobNotFinished, PayloadTooLarge, StylefleetError
from stylefleet.imageio import decode
from stylefleet.manifest import OUTPUT_EXTENSIONS, Record, now_iso, output_names, sha256_hex
from stylefleet.prompts import PromptItem, describe_defaults, output_name, parse_prompts
from stylefleet.router.catalog import Style
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs import events
from stylefleet.router.jobs.lease import Leases, default_owner
from stylefleet.router.jobs.result import ResultZips
from stylefleet.router.jobs.runner import STATE_WRITE_INTERVAL_S, Runner, RunningJob, save_state
from stylefleet.router.jobs.store import FINAL, ItemSpec, JobSpec, JobStore, describe, failed_record
from stylefleet.storage import Storage

logger = serve_logger(__name__)


class JobManager:
    """Creates, runs, resumes, describes and cancels jobs for one router replica."""

    def __init__(
        self,
        core: RouterCore,
        storage: Storage,
        config: JobsConfig,
        *,
        max_item_bytes: int,
        owner: str | None = None,
        actor_id: str | None = None,
        owner_alive: Callable[[str], bool | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``actor_id`` (this router's Ray actor) goes into each lease it takes; ``owner_alive``
        asks Ray whether a lease holder's actor still lives (None: cannot tell), so a job whose
        router is known dead is resumed at the next tick instead of after ``lease_timeout_s``."""
        self.core = core
        self.storage = storage
        self.config = config
        self.max_item_bytes = max_item_bytes
        self.store = JobStore(storage)
        self.leases = Leases(
            storage, config.lease_timeout_s, owner=owner or default_owner(), actor_id=actor_id, owner_alive=owner_alive, clock=clock
        )
        self.runner = Runner(core, self.store, config, random.Random())
        self.results = ResultZips(self.store)
        self._jobs: dict[str, RunningJob] = {}  # the jobs this replica runs now
        self._final: set[str] = set()  # jobs seen over: never scanned again
        self._unsaved: dict[str, dict[str, Any]] = {}  # final states storage could not take yet (full)
        self._scheduler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.tick_s = min(2.0, config.lease_timeout_s / 3)

    # The lease holder's identity, settable after construction (the tests, the Serve app).
    @property
    def owner(self) -> str:
        return self.leases.owner

    @property
    def actor_id(self) -> str | None:
        return self.leases.actor_id

    @actor_id.setter
    def actor_id(self, value: str | None) -> None:
        self.leases.actor_id = value

    @property
    def owner_alive(self) -> Callable[[str], bool | None] | None:
        return self.leases.owner_alive

    @owner_alive.setter
    def owner_alive(self, value: Callable[[str], bool | None] | None) -> None:
        self.leases.owner_alive = value

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the scheduler on the running event loop (once): it resumes unfinished jobs."""
        if self._scheduler is None or self._scheduler.done():
            self._wake = asyncio.Event()
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule_loop())

    def stop(self) -> None:
        """Stop running jobs and release their leases, so another replica resumes them at once.
        Items in flight are not recorded, so they run again there: none is lost or done twice."""
        scheduler, self._scheduler = self._scheduler, None
        jobs, self._jobs = list(self._jobs.values()), {}
        with contextlib.suppress(RuntimeError):  # called again by the garbage collector, loop closed
            if scheduler is not None:
                scheduler.cancel()
            for job in jobs:
                if job.task is not None:
                    job.task.cancel()
        for job in jobs:
            self.leases.release(job.spec.id)

    # -- API ---------------------------------------------------------------------------------

    async def create(
        self,
        style_name: str,
        fields: dict[str, str],
        *,
        client_key: str | None,
        images: list[tuple[str, IO[bytes]]],
        archive: IO[bytes] | None,
        shared: dict[str, bytes],
        prompts: tuple[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Validate (404 style, 422 params, 400/413 archive) and store a job; it starts queued.
        A text-to-image style takes ``prompts`` (a prompt list, ``stylefleet.prompts``) instead of images."""
        given = {k: v for k, v in fields.items() if k not in ("variant", "client_id")}
        from_text = not self.core.catalog.get(style_name).image_fields
        style, variant = self.core.check(style_name, dict(fields), [*([] if from_text else ["image"]), *shared], client_key=client_key)
        for name, data in shared.items():
            await asyncio.to_thread(decode, data, max_pixels=self.core.max_pixels, field=name)
        if from_text:
            if images or archive is not None or prompts is None:
                raise InvalidParams(
                    f"style {style.name!r} makes images from text: send a 'prompts' file (one prompt per line, or JSONL), no images"
                )
            lines = _read_prompts(style, given, prompts)
            if len(lines) > self.config.max_items:
                raise PayloadTooLarge(f"{len(lines)} prompts; a job takes at most {self.config.max_items} (jobs.max_items)")
        elif prompts is not None:
            raise InvalidParams(
                f"style {style.name!r} takes images: send 'images' files or an 'archive' zip (a prompt goes in the 'prompt' field)"
            )
        elif bool(images) == (archive is not None):
            raise InvalidParams("send the images as 'images' files or as one 'archive' zip (not both)")
        if len(images) > self.config.max_items:
            raise PayloadTooLarge(f"{len(images)} images; a job takes at most {self.config.max_items} (jobs.max_items)")
        job_id = uuid.uuid4().hex
        try:
            spec, results = await self._store_new(
                job_id, style, variant, given, shared, from_text, lines if from_text else [], images, archive
            )
        except BaseException:
            await asyncio.to_thread(self.store.delete, job_id)  # nothing is left of a job refused (or storage full)
            raise
        self.ensure_started()
        self._wake.set()
        return describe(spec, results, "queued", None, None, items=False)

    async def _store_new(
        self,
        job_id: str,
        style: Style,
        variant: str,
        given: dict[str, str],
        shared: dict[str, bytes],
        from_text: bool,
        lines: list[PromptItem],
        images: list[tuple[str, IO[bytes]]],
        archive: IO[bytes] | None,
    ) -> tuple[JobSpec, dict[int, Record]]:
        """Write the new job (inputs, shared files, records of items failed already, state, spec);
        InsufficientStorage (507) when the storage cannot take it."""
        params = dict(given) | {k: "sha256:" + sha256_hex(v) for k, v in shared.items()}
        if from_text:
            ext = OUTPUT_EXTENSIONS[given.get("format", "png")]
            items = [
                ItemSpec(p.name, output_name(i, len(lines), p.prompt, ext), sha256_hex(p.text.encode()), p.fields)
                for i, p in enumerate(lines)
            ]
            failed: dict[int, StylefleetError] = {i: InvalidPromptLine(p.error) for i, p in enumerate(lines) if p.error}
            if shared:
                await asyncio.to_thread(self.store.store_shared, job_id, shared)
        else:
            names, hashes, failed = await asyncio.to_thread(
                self.store.store_inputs,
                job_id,
                images,
                archive,
                shared,
                max_items=self.config.max_items,
                max_archive_uncompressed_bytes=self.config.max_archive_uncompressed_bytes,
                max_item_bytes=self.max_item_bytes,
            )
            outputs = output_names(names, given.get("format", "png"))
            items = [ItemSpec(n, outputs[n], h) for n, h in zip(names, hashes)]
        spec = JobSpec(job_id, style.name, given, params, variant, now_iso(), items, sorted(shared))
        results = {i: failed_record(spec, i, exc) for i, exc in failed.items()}
        await asyncio.to_thread(self.store.write_new, spec, results)
        return spec, results

    async def get(self, job_id: str, *, items: bool = True) -> dict[str, Any]:
        """The job as last written to ``state.json``, whichever replica answers: the runner
        shows what it persisted (at most ``STATE_WRITE_INTERVAL_S`` old), not its newer memory, so
        a client moving between replicas, or to the replica that resumes the job after its
        runner died, never sees progress go backwards (results are written before the state)."""
        job = self._jobs.get(job_id)
        if job is not None:
            state = dict(job.saved) if job.saved is not None else job.describe()
        elif job_id in self._unsaved:
            state = dict(self._unsaved[job_id])  # ended here; its storage was too full to record it yet
        else:
            state = await asyncio.to_thread(self.store.read_state, job_id)
        if not items:
            state.pop("items", None)
        return state

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE``: a job still going is stopped (at once if this replica runs it or nobody
        does, else through the ``cancel`` marker its runner checks every tick) and kept, so its
        result can be fetched; a job that had ended is removed with all its files, freeing its
        space (``deleted: true``; later requests are 404)."""
        state = await self.get(job_id)
        if state["status"] in FINAL:
            await self.delete(job_id)
            return {**state, "deleted": True}
        try:
            await asyncio.to_thread(self.store.request_cancel, job_id, now_iso())
        except InsufficientStorage:
            if job_id not in self._jobs:
                raise  # its runner is elsewhere and reads the marker: 507, cancel again once there is room
        job = self._jobs.get(job_id)
        if job is None and await asyncio.to_thread(self.leases.claim, job_id):
            job = await self._load(job_id)
            self._jobs[job_id] = job
        if job is not None:
            await self._finish(job, "canceled")
            return job.describe()
        state["status"] = "canceled"  # its runner, on another replica, stops within a tick
        return state

    async def delete(self, job_id: str) -> None:
        """Remove an ended job's folder: inputs, outputs, records, state, result zip, lease."""
        self._unsaved.pop(job_id, None)
        lock = self.results.forget(job_id)
        async with lock:  # not while its result zip is being built
            await asyncio.to_thread(self.store.delete, job_id)
        logger.info("job %s deleted", job_id)

    async def events(self, job_id: str) -> AsyncIterator[str]:
        """Server-sent events (``stylefleet.router.jobs.events``); 404 before the stream starts."""
        state = await self.get(job_id, items=False)

        def changed() -> asyncio.Event | None:
            job = self._jobs.get(job_id)
            return job.changed if job is not None else None

        return events.stream(lambda: self.get(job_id), changed, events.min_gap_s(state["total"]))

    async def result(self, job_id: str) -> str:
        """The storage path of the job's result zip (built the first time it is asked for)."""
        state = await self.get(job_id, items=False)
        if state["status"] not in FINAL:
            raise JobNotFinished(f"job {job_id} is {state['status']}; its result is ready when it ends (GET /v1/jobs/{job_id}/events)")
        return await self.results.ensure(job_id)

    # -- scheduling --------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await self._schedule_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a storage hiccup must not end the scheduler
                logger.exception("job scheduler tick failed")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)

    async def _schedule_once(self) -> None:
        """One tick: check the running jobs (cancelled? lease still ours? state to save?), then
        take unfinished jobs from storage up to ``max_running_jobs``."""
        now = time.monotonic()
        for job_id, state in list(self._unsaved.items()):  # a full disk may have room again
            with contextlib.suppress(InsufficientStorage):
                await asyncio.to_thread(self.store.write_state, job_id, state)
                self._unsaved.pop(job_id, None)
        for job in list(self._jobs.values()):
            if await asyncio.to_thread(self.store.cancel_requested, job.spec.id):
                await self._finish(job, "canceled")
                continue
            if now - job.renewed_at >= self.config.lease_timeout_s / 3:
                try:
                    renewed = await asyncio.to_thread(self.leases.renew, job.spec.id)
                except InsufficientStorage as exc:  # the lease file cannot be rewritten: go on, ours while it lasts
                    logger.warning("job %s: lease not renewed: %s", job.spec.id, exc.message)
                    renewed = True
                if not renewed:
                    logger.warning("job %s: lease lost to another replica; stopping here", job.spec.id)
                    if job.task is not None:
                        job.task.cancel()
                    self._jobs.pop(job.spec.id, None)
                    continue
                job.renewed_at = now
            if now - job.saved_at >= STATE_WRITE_INTERVAL_S:
                await save_state(self.store, job)
        if len(self._jobs) >= self.config.max_running_jobs:
            return
        for job_id in await asyncio.to_thread(self.store.unfinished, self._jobs, self._final):
            if len(self._jobs) >= self.config.max_running_jobs:
                break
            if job_id in self._jobs or not await self._claim(job_id):
                continue
            job = await self._load(job_id)
            if await asyncio.to_thread(self.store.cancel_requested, job_id):
                self._jobs[job_id] = job
                await self._finish(job, "canceled")
                continue
            self._jobs[job_id] = job
            job.renewed_at = time.monotonic()
            job.task = asyncio.get_running_loop().create_task(self._run(job))

    async def _claim(self, job_id: str) -> bool:
        """Take the job's lease. Storage too full for the lease file: the job stays queued, and
        starts at a later tick once there is room (it could not keep a single output now)."""
        try:
            return bool(await asyncio.to_thread(self.leases.claim, job_id))
        except InsufficientStorage as exc:
            logger.warning("job %s stays queued: %s", job_id, exc.message)
            return False

    async def _load(self, job_id: str) -> RunningJob:
        stored = await asyncio.to_thread(self.store.load, job_id)
        return RunningJob(stored.spec, stored.results, status="queued", started_at=stored.started_at, shared_files=stored.shared_files)

    async def _run(self, job: RunningJob) -> None:
        status, reason = await self.runner.run(job)
        await self._finish(job, status, current=False, reason=reason)

    async def _finish(self, job: RunningJob, status: str, *, current: bool = True, reason: Exception | None = None) -> None:
        """Record a final status and let the job go. ``current``: stop its task first."""
        if current and job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        job.status, job.finished_at = status, now_iso()
        job.touch()
        if not await save_state(self.store, job) and job.saved is not None:
            self._unsaved[job.spec.id] = job.saved  # shown from memory, written when there is room
        await asyncio.to_thread(self.leases.release, job.spec.id)
        self._jobs.pop(job.spec.id, None)
        self._final.add(job.spec.id)
        self._wake.set()
        logger.info("job %s %s (%d/%d done)%s", job.spec.id, status, len(job.results), len(job.spec.items), f": {reason}" if reason else "")


def _read_prompts(style: Style, fields: dict[str, str], prompts: tuple[str, bytes]) -> list[PromptItem]:
    """A prompt list's lines, each with its completed params (or the error that fails it alone)."""
    name, data = prompts
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParams("prompts: not UTF-8 text") from None
    defaults, allowed = describe_defaults(style.describe()["params"])
    lines = parse_prompts(
        text,
        posixpath.basename((name or "prompts.txt").replace("\\", "/")) or "prompts.txt",
        run_fields=fields,
        defaults=defaults,
        allowed=allowed,
    )
    if not lines:
        raise InvalidParams("prompts: no prompts (one per line, or a JSONL object per line)")
    return lines
