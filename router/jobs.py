"""Server-side batch jobs: accepted by any router replica, run through ``RouterCore.handle`` (the
same validation, A/B choice, deployment handles, batching and metrics as online requests), and
kept in a ``Storage`` (a local folder or any fsspec URI) so that they survive restarts.

Layout of one job under the storage root::

    {id}/job.json            what to do: style, params, variant, items (name, output, sha256); written last
    {id}/inputs/{i:06d}      item i's bytes (names never come from the client: no path escapes);
                             a prompt list's items have none: their params are in job.json
    {id}/shared/{field}      extra files sent with every item (restyle's style_image)
    {id}/results/{i:06d}.json  item i's manifest record, written once its output is in place
    {id}/outputs/{output}    item i's result
    {id}/state.json          the job as GET shows it, rewritten by its runner (at most once a second)
    {id}/lease.json          which router replica runs the job, until when
    {id}/cancel              asked to stop
    {id}/result.zip          outputs + manifest.jsonl + failures.jsonl, built once the job is over

One replica runs a job at a time, holding its lease and renewing it; a job whose lease expired
(its replica died) or was released (the replica shut down) is resumed by whichever replica scans
it next: items with a result are never run again, the others are. At most
``max_in_flight_per_job`` items of a job are in flight, so online traffic keeps the rest of each
deployment's queue; the variant is chosen once per job, so a whole job has one look.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import random
import re
import socket
import tempfile
import time
import uuid
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from router.archive import check_archive, read_member
from router.catalog import Style
from router.core import RouterCore
from stylefleet.config import JobsConfig
from stylefleet.errors import (
    InvalidImage,
    InvalidParams,
    InvalidPromptLine,
    JobNotFinished,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    StylefleetError,
    UnknownJob,
    clip,
)
from stylefleet.imageio import decode
from stylefleet.manifest import FAILURES, MANIFEST, OUTPUT_EXTENSIONS, Record, failures_text, now_iso, output_names, sha256_hex
from stylefleet.prompts import PromptItem, describe_defaults, output_name, parse_prompts
from stylefleet.storage import Storage

logger = logging.getLogger("ray.serve")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
FINAL = frozenset({"succeeded", "failed", "canceled"})
STATE_WRITE_INTERVAL_S = 1.0
EVENTS_STREAM_S = 90.0  # below Serve's default request_timeout_s (120): the stream ends itself, EventSource reconnects
EVENTS_KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class ItemSpec:
    name: str
    output: str
    sha256: str
    fields: dict[str, str] | None = None  # a prompt line's completed params (stylefleet.prompts); None: an image


@dataclass
class JobSpec:
    """``job.json``: fixed at creation."""

    id: str
    style: str
    fields: dict[str, str]  # params and output format, as sent (no variant, no client_id)
    params: dict[str, str]  # the manifest's params: fields + a checksum per shared file
    variant: str
    created_at: str
    items: list[ItemSpec]
    shared: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        raw = json.loads(text)
        raw["items"] = [ItemSpec(**i) for i in raw["items"]]  # jobs stored before prompt lists have no "fields": None
        return cls(**raw)


@dataclass
class _Job:
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
        self.changed.set()
        self.changed = asyncio.Event()


def describe(spec: JobSpec, results: dict[int, Record], status: str, started_at: str | None, finished_at: str | None, *, items: bool = True) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it."""
    ok = sum(r.status == "ok" for r in results.values())
    out: dict[str, Any] = {
        "id": spec.id,
        "style": spec.style,
        "status": status,
        "total": len(spec.items),
        "done": len(results),
        "succeeded": ok,
        "failed": len(results) - ok,
        "created_at": spec.created_at,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    if items:
        out["items"] = [
            {"name": it.name, "status": results[i].status, "error": results[i].error} if i in results
            else {"name": it.name, "status": "pending", "error": None}
            for i, it in enumerate(spec.items)
        ]
    return out


def _item(i: int) -> str:
    return f"{i:06d}"


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
        clock: Any = time.time,
    ) -> None:
        """``actor_id`` (this router's Ray actor) goes into each lease it takes; ``owner_alive``
        asks Ray whether a lease holder's actor still lives (None: cannot tell), so a job whose
        router is known dead is resumed at the next tick instead of after ``lease_timeout_s``."""
        self.core = core
        self.storage = storage
        self.config = config
        self.max_item_bytes = max_item_bytes
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.actor_id = actor_id
        self.owner_alive = owner_alive
        self.rng = random.Random()
        self._jobs: dict[str, _Job] = {}  # the jobs this replica runs now
        self._final: set[str] = set()  # jobs seen over: never scanned again
        self._scheduler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._zip_locks: dict[str, asyncio.Lock] = {}
        self.tick_s = min(2.0, config.lease_timeout_s / 3)

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
            self._release(job.spec.id)

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
                raise InvalidParams(f"style {style.name!r} makes images from text: send a 'prompts' file (one prompt per line, or JSONL), no images")
            lines = _read_prompts(style, given, prompts)
            if len(lines) > self.config.max_items:
                raise PayloadTooLarge(f"{len(lines)} prompts; a job takes at most {self.config.max_items} (jobs.max_items)")
        elif prompts is not None:
            raise InvalidParams(f"style {style.name!r} takes images: send 'images' files or an 'archive' zip (a prompt goes in the 'prompt' field)")
        elif bool(images) == (archive is not None):
            raise InvalidParams("send the images as 'images' files or as one 'archive' zip (not both)")
        if len(images) > self.config.max_items:
            raise PayloadTooLarge(f"{len(images)} images; a job takes at most {self.config.max_items} (jobs.max_items)")
        job_id = uuid.uuid4().hex
        params = dict(given) | {k: "sha256:" + sha256_hex(v) for k, v in shared.items()}
        if from_text:
            ext = OUTPUT_EXTENSIONS[given.get("format", "png")]
            items = [
                ItemSpec(p.name, output_name(i, len(lines), p.prompt, ext), sha256_hex(p.text.encode()), p.fields)
                for i, p in enumerate(lines)
            ]
            failed: dict[int, StylefleetError] = {i: InvalidPromptLine(p.error) for i, p in enumerate(lines) if p.error}
            if shared:
                await asyncio.to_thread(self._store_inputs, job_id, [], None, shared)
        else:
            try:
                names, hashes, failed = await asyncio.to_thread(self._store_inputs, job_id, images, archive, shared)
            except BaseException:
                await asyncio.to_thread(self.storage.delete, job_id, True)
                raise
            outputs = output_names(names, given.get("format", "png"))
            items = [ItemSpec(n, outputs[n], h) for n, h in zip(names, hashes)]
        spec = JobSpec(job_id, style.name, given, params, variant, now_iso(), items, sorted(shared))
        results = {i: self._failed_record(spec, i, exc) for i, exc in failed.items()}
        await asyncio.to_thread(self._write_new, spec, results)
        self.ensure_started()
        self._wake.set()
        return describe(spec, results, "queued", None, None, items=False)

    async def get(self, job_id: str, *, items: bool = True) -> dict[str, Any]:
        """The job as last written to ``state.json``, whichever replica answers: the runner
        shows what it persisted (at most ``STATE_WRITE_INTERVAL_S`` old), not its newer memory, so
        a client moving between replicas, or to the replica that resumes the job after its
        runner died, never sees progress go backwards (results are written before the state)."""
        job = self._jobs.get(job_id)
        if job is not None:
            state = dict(job.saved) if job.saved is not None else describe(job.spec, job.results, job.status, job.started_at, job.finished_at)
            if not items:
                state.pop("items", None)
            return state
        state = await asyncio.to_thread(self._read_state, job_id)
        if not items:
            state.pop("items", None)
        return state

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop the job: at once if this replica runs it or nobody does, else through the
        ``cancel`` marker its runner checks every tick. Finished jobs stay as they are."""
        state = await self.get(job_id)
        if state["status"] in FINAL:
            return state
        await asyncio.to_thread(self.storage.write_text, f"{job_id}/cancel", now_iso())
        job = self._jobs.get(job_id)
        if job is None and await asyncio.to_thread(self._claim, job_id):
            job = await asyncio.to_thread(self._load, job_id)
            self._jobs[job_id] = job
        if job is not None:
            await self._finish(job, "canceled")
            return describe(job.spec, job.results, job.status, job.started_at, job.finished_at)
        state["status"] = "canceled"  # its runner, on another replica, stops within a tick
        return state

    async def events(self, job_id: str) -> AsyncIterator[str]:
        """Server-sent events: ``progress`` (the GET JSON, items included, so a page can show
        each item as it ends) on every change, ``end`` at a final status."""
        state = await self.get(job_id, items=False)  # 404 before the stream starts
        return self._events(job_id, min_gap_s=max(0.05, state["total"] / 10_000))

    async def _events(self, job_id: str, min_gap_s: float) -> AsyncIterator[str]:
        """``min_gap_s`` coalesces bursts: 50 ms, up to 1 s for a 10,000-item job (~1 MB/event)."""
        yield "retry: 1000\n\n"
        deadline = time.monotonic() + EVENTS_STREAM_S
        last: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            job = self._jobs.get(job_id)
            changed = job.changed if job is not None else None
            state = await self.get(job_id)
            if state != last:
                yield _sse("progress", state)
                last, quiet_since = state, time.monotonic()
            if state["status"] in FINAL:
                yield _sse("end", state)
                return
            if time.monotonic() > deadline:
                return
            if time.monotonic() - quiet_since > EVENTS_KEEPALIVE_S:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            if changed is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=1.0)
                await asyncio.sleep(min_gap_s)
            else:
                await asyncio.sleep(0.5)  # another replica runs it: poll its state file

    async def result(self, job_id: str) -> str:
        """The storage path of the job's result zip (built the first time it is asked for)."""
        state = await self.get(job_id, items=False)
        if state["status"] not in FINAL:
            raise JobNotFinished(f"job {job_id} is {state['status']}; its result is ready when it ends (GET /v1/jobs/{job_id}/events)")
        rel = f"{job_id}/result.zip"
        async with self._zip_locks.setdefault(job_id, asyncio.Lock()):
            if not await asyncio.to_thread(self.storage.exists, rel):
                await asyncio.to_thread(self._build_zip, job_id, rel)
        return rel

    # -- creation ----------------------------------------------------------------------------

    def _store_inputs(
        self, job_id: str, images: list[tuple[str, IO[bytes]]], archive: IO[bytes] | None, shared: dict[str, bytes]
    ) -> tuple[list[str], list[str], dict[int, StylefleetError]]:
        """Write each item's bytes under a generated name; (names, sha256s, items failed already)."""
        names: list[str] = []
        hashes: list[str] = []
        failed: dict[int, StylefleetError] = {}

        def keep(i: int, data: bytes | Exception, size: int) -> None:
            hashes.append("" if isinstance(data, Exception) or size > self.max_item_bytes else sha256_hex(data))
            if isinstance(data, Exception):
                failed[i] = InvalidImage(f"could not read {names[i]!r} from the upload: {data}")
            elif size > self.max_item_bytes:
                failed[i] = PayloadTooLarge(f"{size} bytes; one image may have at most {self.max_item_bytes} (limits.max_upload_bytes)")
            else:
                self.storage.write_bytes(f"{job_id}/inputs/{_item(i)}", data)

        if archive is not None:
            zf, members = check_archive(
                archive, max_items=self.config.max_items, max_uncompressed_bytes=self.config.max_archive_uncompressed_bytes
            )
            with zf:
                for i, member in enumerate(members):
                    names.append(member.name)
                    if member.size > self.max_item_bytes:
                        keep(i, b"", member.size)
                        continue
                    try:
                        data: bytes | Exception = read_member(zf, member)
                    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a corrupt member fails alone
                        data = exc
                    keep(i, data, member.size)
        else:
            for i, (name, fh) in enumerate(images):
                names.append(_upload_name(name, i, names))
                data = fh.read(self.max_item_bytes + 1)
                keep(i, data, len(data))
        for name, blob in shared.items():
            self.storage.write_bytes(f"{job_id}/shared/{name}", blob)
        return names, hashes, failed

    def _write_new(self, spec: JobSpec, results: dict[int, Record]) -> None:
        for i, record in results.items():
            self.storage.write_text(f"{spec.id}/results/{_item(i)}.json", record.to_json())
        self.storage.write_text(f"{spec.id}/state.json", json.dumps(describe(spec, results, "queued", None, None)))
        self.storage.write_text(f"{spec.id}/job.json", json.dumps(asdict(spec)))  # last: the job exists from here

    def _failed_record(self, spec: JobSpec, i: int, exc: StylefleetError) -> Record:
        item = spec.items[i]
        return Record(
            input=item.name, input_sha256=item.sha256, style=spec.style, params=_params(spec, item), status="failed",
            variant=spec.variant, error={"code": exc.code, "message": exc.message},
        )

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
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if await asyncio.to_thread(self.storage.exists, f"{job.spec.id}/cancel"):
                await self._finish(job, "canceled")
                continue
            if now - job.renewed_at >= self.config.lease_timeout_s / 3:
                if not await asyncio.to_thread(self._renew, job.spec.id):
                    logger.warning("job %s: lease lost to another replica; stopping here", job.spec.id)
                    if job.task is not None:
                        job.task.cancel()
                    self._jobs.pop(job.spec.id, None)
                    continue
                job.renewed_at = now
            if now - job.saved_at >= STATE_WRITE_INTERVAL_S:
                await self._save_state(job)
        if len(self._jobs) >= self.config.max_running_jobs:
            return
        for job_id in await asyncio.to_thread(self._runnable):
            if len(self._jobs) >= self.config.max_running_jobs:
                break
            if job_id in self._jobs or not await asyncio.to_thread(self._claim, job_id):
                continue
            job = await asyncio.to_thread(self._load, job_id)
            if await asyncio.to_thread(self.storage.exists, f"{job_id}/cancel"):
                self._jobs[job_id] = job
                await self._finish(job, "canceled")
                continue
            self._jobs[job_id] = job
            job.renewed_at = time.monotonic()
            job.task = asyncio.get_running_loop().create_task(self._run(job))

    def _runnable(self) -> list[str]:
        """Unfinished jobs in storage, oldest first."""
        found = []
        for job_id in self.storage.listdir():
            if not JOB_ID.match(job_id) or job_id in self._final or job_id in self._jobs:
                continue
            try:
                state = json.loads(self.storage.read_text(f"{job_id}/state.json"))
                if not self.storage.exists(f"{job_id}/job.json"):
                    continue  # still being created (or its creation failed)
            except (FileNotFoundError, ValueError):
                continue
            if state["status"] in FINAL:
                self._final.add(job_id)
            else:
                found.append((state["created_at"], job_id))
        return [job_id for _, job_id in sorted(found)]

    def _claim(self, job_id: str) -> bool:
        """Take the job's lease if it is free or expired. Re-read after a moment: of two
        replicas claiming at once, only the last writer goes on."""
        rel = f"{job_id}/lease.json"
        lease = self._read_lease(rel)
        if lease and lease["owner"] != self.owner and lease["expires_at"] > self.clock():
            if not self._holder_dead(lease):
                return False
            logger.warning("job %s: its router (actor %s) is dead; resuming it now", job_id, lease["actor_id"])
        self.storage.write_text(rel, self._lease_json())
        time.sleep(0.1)
        lease = self._read_lease(rel)
        return lease is not None and lease["owner"] == self.owner

    def _renew(self, job_id: str) -> bool:
        rel = f"{job_id}/lease.json"
        lease = self._read_lease(rel)
        if lease and lease["owner"] != self.owner:
            return False
        self.storage.write_text(rel, self._lease_json())
        return True

    def _lease_json(self) -> str:
        lease = {"owner": self.owner, "expires_at": self.clock() + self.config.lease_timeout_s}
        if self.actor_id:
            lease["actor_id"] = self.actor_id
        return json.dumps(lease)

    def _holder_dead(self, lease: dict[str, Any]) -> bool:
        """True only when Ray says the lease holder's actor is dead; unknown is alive."""
        actor_id = lease.get("actor_id")
        if not actor_id or self.owner_alive is None:
            return False
        try:
            return self.owner_alive(str(actor_id)) is False
        except Exception:  # noqa: BLE001 - no answer is no evidence: wait for the lease
            logger.warning("could not ask Ray about actor %s", actor_id, exc_info=True)
            return False

    def _release(self, job_id: str) -> None:
        rel = f"{job_id}/lease.json"
        with contextlib.suppress(Exception):
            lease = self._read_lease(rel)
            if lease and lease["owner"] == self.owner:
                self.storage.delete(rel)

    def _read_lease(self, rel: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.storage.read_text(rel))
        except (FileNotFoundError, ValueError):
            return None

    def _load(self, job_id: str) -> _Job:
        spec = JobSpec.from_json(self.storage.read_text(f"{job_id}/job.json"))
        state = self._read_state(job_id)
        results = self._load_results(job_id)
        if len(results) < int(state.get("done", 0)):
            # fewer results than the last runner reported: a stale listing (object stores cache
            # them); list again before going on, so progress does not seem to go backwards
            self.storage.fs.invalidate_cache()
            results = self._load_results(job_id)
            if len(results) < int(state.get("done", 0)):
                logger.warning("job %s: %d results found, %d reported; the missing items run again", job_id, len(results), state["done"])
        job = _Job(spec, results, status="queued", started_at=state.get("started_at"))
        job.shared_files = {n: self.storage.read_bytes(f"{job_id}/shared/{n}") for n in spec.shared}
        return job

    def _load_results(self, job_id: str) -> dict[int, Record]:
        results: dict[int, Record] = {}
        for name in self.storage.listdir(f"{job_id}/results"):
            if name.endswith(".json") and name[:-5].isdigit():
                with contextlib.suppress(ValueError, TypeError):
                    results[int(name[:-5])] = Record.from_dict(json.loads(self.storage.read_text(f"{job_id}/results/{name}")))
        return results

    def _read_state(self, job_id: str) -> dict[str, Any]:
        if not JOB_ID.match(job_id):
            raise UnknownJob(f"no job {clip(job_id)}")
        try:
            return dict(json.loads(self.storage.read_text(f"{job_id}/state.json")))
        except (FileNotFoundError, ValueError):
            raise UnknownJob(f"no job {job_id!r}") from None

    # -- running -----------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        job.status = "running"
        job.started_at = job.started_at or now_iso()
        await self._save_state(job)
        pending = deque(i for i in range(len(job.spec.items)) if i not in job.results)
        logger.info("job %s: running %d of %d items", job.spec.id, len(pending), len(job.spec.items))

        async def worker() -> None:
            while pending:
                i = pending.popleft()
                record = await self._process(job, i)
                await asyncio.to_thread(self.storage.write_text, f"{job.spec.id}/results/{_item(i)}.json", record.to_json())
                job.results[i] = record
                job.touch()
                if time.monotonic() - job.saved_at >= STATE_WRITE_INTERVAL_S:
                    await self._save_state(job)

        try:
            workers = min(self.config.max_in_flight_per_job, len(pending))
            await asyncio.gather(*(worker() for _ in range(workers)))
        except asyncio.CancelledError:
            raise  # stopped (shutdown, cancel, lease lost): whoever stopped it records the state
        except Exception as exc:  # noqa: BLE001 - storage failed under the job
            logger.exception("job %s failed", job.spec.id)
            await self._finish(job, "failed", current=False, reason=exc)
            return
        ok = any(r.status == "ok" for r in job.results.values())
        await self._finish(job, "succeeded" if ok else "failed", current=False)

    async def _process(self, job: _Job, i: int) -> Record:
        spec, item = job.spec, job.spec.items[i]
        started = time.perf_counter()
        if item.fields is None:
            data = await asyncio.to_thread(self.storage.read_bytes, f"{spec.id}/inputs/{_item(i)}")
            files = {"image": data, **job.shared_files}
        else:
            files = dict(job.shared_files)
        fields = {**spec.fields, **(item.fields or {}), "variant": spec.variant}
        base = dict(input=item.name, input_sha256=item.sha256, style=spec.style, params=_params(spec, item), variant=spec.variant)
        for attempt in range(self.config.item_retries + 1):
            try:
                result = await self.core.handle(spec.style, files, dict(fields))
            except (Overloaded, ModelUnavailable) as exc:
                if attempt >= self.config.item_retries:
                    return Record(**base, status="failed", error={"code": exc.code, "message": exc.message})  # type: ignore[arg-type]
                retry_after = float(exc.headers.get("Retry-After", 0) or 0)
                await asyncio.sleep(max(retry_after, self.rng.uniform(0.5, 1.0) * min(30.0, 0.5 * 2**attempt)))
                continue
            except StylefleetError as exc:
                return Record(**base, status="failed", error={"code": exc.code, "message": exc.message}, seconds=round(time.perf_counter() - started, 4))  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - one item never fails its job
                logger.exception("job %s item %d", spec.id, i)
                return Record(**base, status="failed", error={"code": "internal_error", "message": "unexpected error; it was logged"})  # type: ignore[arg-type]
            await asyncio.to_thread(self.storage.write_bytes, f"{spec.id}/outputs/{item.output}", result.image.data)
            return Record(
                **base,  # type: ignore[arg-type]
                status="ok", output=item.output, model_sha256=result.image.model_sha256,
                seed=result.seeds[0], nsfw=result.image.nsfw, seconds=round(time.perf_counter() - started, 4),
            )
        raise AssertionError("unreachable")

    async def _finish(self, job: _Job, status: str, *, current: bool = True, reason: Exception | None = None) -> None:
        """Record a final status and let the job go. ``current``: stop its task first."""
        if current and job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        job.status, job.finished_at = status, now_iso()
        job.touch()
        await self._save_state(job)
        await asyncio.to_thread(self._release, job.spec.id)
        self._jobs.pop(job.spec.id, None)
        self._final.add(job.spec.id)
        self._wake.set()
        logger.info("job %s %s (%d/%d done)%s", job.spec.id, status, len(job.results), len(job.spec.items), f": {reason}" if reason else "")

    async def _save_state(self, job: _Job) -> None:
        """Snapshots are taken and written one at a time: two writes in flight could land out of
        order, and an older snapshot over a newer one is progress going backwards."""
        async with job.save_lock:
            job.saved_at = time.monotonic()
            state = describe(job.spec, job.results, job.status, job.started_at, job.finished_at)
            await asyncio.to_thread(self.storage.write_text, f"{job.spec.id}/state.json", json.dumps(state))
            job.saved = state
            job.touch()

    # -- result ------------------------------------------------------------------------------

    def _build_zip(self, job_id: str, rel: str) -> None:
        job = self._load(job_id)
        records = [job.results[i] for i in sorted(job.results)]
        fd, tmp = tempfile.mkstemp(prefix=f"stylefleet-{job_id}-", suffix=".zip")
        try:
            with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
                for record in records:
                    if record.status == "ok" and record.output:
                        zf.writestr(_zinfo(record.output), self.storage.read_bytes(f"{job_id}/outputs/{record.output}"), zipfile.ZIP_STORED)
                zf.writestr(_zinfo(MANIFEST), "".join(r.to_json() + "\n" for r in records), zipfile.ZIP_DEFLATED)
                zf.writestr(_zinfo(FAILURES), failures_text(records), zipfile.ZIP_DEFLATED)
            self.storage.put_file(tmp, rel)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _params(spec: JobSpec, item: ItemSpec) -> dict[str, str]:
    """The manifest's params: the job's, and a prompt line's own (prompt, seed, steps)."""
    return {**spec.params, **(item.fields or {})}


def _read_prompts(style: Style, fields: dict[str, str], prompts: tuple[str, bytes]) -> list[PromptItem]:
    name, data = prompts
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParams("prompts: not UTF-8 text") from None
    defaults, allowed = describe_defaults(style.describe()["params"])
    lines = parse_prompts(text, posixpath.basename((name or "prompts.txt").replace("\\", "/")) or "prompts.txt",
                          run_fields=fields, defaults=defaults, allowed=allowed)
    if not lines:
        raise InvalidParams("prompts: no prompts (one per line, or a JSONL object per line)")
    return lines


def _zinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _upload_name(name: str | None, i: int, taken: list[str]) -> str:
    """A client's file name, reduced to its last part; unique within the job."""
    base = posixpath.basename((name or "").replace("\\", "/")).strip() or f"image-{i + 1}"
    if base.startswith("."):
        base = f"image-{i + 1}{base}"
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    candidate, n = base, 1
    lowered = {t.lower() for t in taken}
    while candidate.lower() in lowered:
        n += 1
        candidate = f"{stem}-{n}.{ext}" if dot else f"{stem}-{n}"
    return candidate
