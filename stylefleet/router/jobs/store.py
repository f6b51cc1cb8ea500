"""Where a job lives: its layout under the storage root, its spec, and every read and write of it.

Layout of one job under the storage root::

    {id}/job.json            what to do: style, params, variant, items (name, output, sha256); written last
    {id}/inputs/{i:06d}      item i's bytes (names never come from the client: no path escapes);
                             a prompt list's items have none: their params are in job.json
    {id}/shared/{field}      extra files sent with every item (restyle's style_image)
    {id}/results/{i:06d}.json  item i's manifest record, written once its output is in place
    {id}/outputs/{output}    item i's result, under a name safe on any disk (``stylefleet.manifest.safe_name``:
                             at most 200 bytes a part; the client's name stays in job.json and the manifest)
    {id}/state.json          the job as GET shows it, rewritten by its runner (at most once a second)
    {id}/lease.json          which router replica runs the job, until when (``stylefleet.router.jobs.lease``)
    {id}/cancel              asked to stop
    {id}/result.zip          outputs + manifest.jsonl + failures.jsonl, built once the job is over

Nothing outside this module and ``lease`` builds a path under a job's folder. Local job files
are private to the service's user (files 0600, folders 0700); a write the storage cannot take
raises ``InsufficientStorage`` (507) and leaves no partial file.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import zipfile
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from stylefleet.deployments.log import serve_logger
from stylefleet.errors import InvalidImage, PayloadTooLarge, StylefleetError, UnknownJob, clip
from stylefleet.manifest import Record, sha256_hex
from stylefleet.router.archive import check_archive, read_member
from stylefleet.storage import Storage

logger = serve_logger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
FINAL = frozenset({"succeeded", "failed", "canceled"})


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
class StoredJob:
    """What storage holds of a job to resume: its spec, the items done, the shared files."""

    spec: JobSpec
    results: dict[int, Record]
    started_at: str | None
    shared_files: dict[str, bytes]


def describe(
    spec: JobSpec,
    results: dict[int, Record],
    status: str,
    started_at: str | None,
    finished_at: str | None,
    *,
    items: bool = True,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it; ``error``: why the job itself failed (its
    storage), None otherwise."""
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
        "error": error,
    }
    if items:
        out["items"] = [
            {"name": it.name, "status": results[i].status, "error": results[i].error}
            if i in results
            else {"name": it.name, "status": "pending", "error": None}
            for i, it in enumerate(spec.items)
        ]
    return out


def item_params(spec: JobSpec, item: ItemSpec) -> dict[str, str]:
    """The manifest's params: the job's, and a prompt line's own (prompt, seed, steps)."""
    return {**spec.params, **(item.fields or {})}


def failed_record(spec: JobSpec, i: int, exc: StylefleetError) -> Record:
    """Item ``i``'s record when it failed before running (unreadable upload, bad prompt line)."""
    item = spec.items[i]
    return Record(
        input=item.name,
        input_sha256=item.sha256,
        style=spec.style,
        params=item_params(spec, item),
        status="failed",
        variant=spec.variant,
        error={"code": exc.code, "message": exc.message},
    )


def upload_name(name: str | None, i: int, taken: list[str]) -> str:
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


def _item(i: int) -> str:
    return f"{i:06d}"


class JobStore:
    """The jobs under one ``Storage`` root. Blocking calls: the async callers run them in threads."""

    def __init__(self, storage: Storage) -> None:
        storage.private = True  # inputs and outputs are the clients' own: no other local user reads them
        self.storage = storage

    # -- creation ----------------------------------------------------------------------------

    def store_inputs(
        self,
        job_id: str,
        images: list[tuple[str, IO[bytes]]],
        archive: IO[bytes] | None,
        shared: dict[str, bytes],
        *,
        max_items: int,
        max_archive_uncompressed_bytes: int,
        max_item_bytes: int,
    ) -> tuple[list[str], list[str], dict[int, StylefleetError]]:
        """Write each item's bytes under a generated name; (names, sha256s, items failed already)."""
        names: list[str] = []
        hashes: list[str] = []
        failed: dict[int, StylefleetError] = {}

        def keep(i: int, data: bytes | Exception, size: int) -> None:
            hashes.append("" if isinstance(data, Exception) or size > max_item_bytes else sha256_hex(data))
            if isinstance(data, Exception):
                failed[i] = InvalidImage(f"could not read {names[i]!r} from the upload: {data}")
            elif size > max_item_bytes:
                failed[i] = PayloadTooLarge(f"{size} bytes; one image may have at most {max_item_bytes} (limits.max_upload_bytes)")
            else:
                self.storage.write_bytes(f"{job_id}/inputs/{_item(i)}", data)

        if archive is not None:
            zf, members = check_archive(archive, max_items=max_items, max_uncompressed_bytes=max_archive_uncompressed_bytes)
            with zf:
                for i, member in enumerate(members):
                    names.append(member.name)
                    if member.size > max_item_bytes:
                        keep(i, b"", member.size)
                        continue
                    try:
                        data: bytes | Exception = read_member(zf, member)
                    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a corrupt member fails alone
                        data = exc
                    keep(i, data, member.size)
        else:
            for i, (name, fh) in enumerate(images):
                names.append(upload_name(name, i, names))
                data = fh.read(max_item_bytes + 1)
                keep(i, data, len(data))
        self.store_shared(job_id, shared)
        return names, hashes, failed

    def store_shared(self, job_id: str, shared: dict[str, bytes]) -> None:
        for name, blob in shared.items():
            self.storage.write_bytes(f"{job_id}/shared/{name}", blob)

    def write_new(self, spec: JobSpec, results: dict[int, Record]) -> None:
        """Store a new job, queued; ``job.json`` goes last: the job exists from there."""
        for i, record in results.items():
            self.write_result(spec.id, i, record)
        self.write_state(spec.id, describe(spec, results, "queued", None, None))
        self.storage.write_text(f"{spec.id}/job.json", json.dumps(asdict(spec)))

    def delete(self, job_id: str) -> None:
        self.storage.delete(job_id, True)

    # -- state -------------------------------------------------------------------------------

    def read_state(self, job_id: str) -> dict[str, Any]:
        """``state.json``; UnknownJob (404) for an id that is not a job's."""
        if not JOB_ID.match(job_id):
            raise UnknownJob(f"no job {clip(job_id)}")
        try:
            return dict(json.loads(self.storage.read_text(f"{job_id}/state.json")))
        except (FileNotFoundError, ValueError):
            raise UnknownJob(f"no job {job_id!r}") from None

    def write_state(self, job_id: str, state: dict[str, Any]) -> None:
        self.storage.write_text(f"{job_id}/state.json", json.dumps(state))

    def request_cancel(self, job_id: str, at: str) -> None:
        self.storage.write_text(f"{job_id}/cancel", at)

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(f"{job_id}/cancel")

    def unfinished(self, skip: Container[str], final: set[str]) -> list[str]:
        """Unfinished jobs in storage, oldest first, except those in ``skip``; jobs found over
        are added to ``final`` (the caller never scans them again)."""
        found = []
        for job_id in self.storage.listdir():
            if not JOB_ID.match(job_id) or job_id in final or job_id in skip:
                continue
            try:
                state = json.loads(self.storage.read_text(f"{job_id}/state.json"))
                if not self.storage.exists(f"{job_id}/job.json"):
                    continue  # still being created (or its creation failed)
            except (FileNotFoundError, ValueError):
                continue
            if state["status"] in FINAL:
                final.add(job_id)
            else:
                found.append((state["created_at"], job_id))
        return [job_id for _, job_id in sorted(found)]

    # -- items -------------------------------------------------------------------------------

    def read_input(self, job_id: str, i: int) -> bytes:
        return self.storage.read_bytes(f"{job_id}/inputs/{_item(i)}")

    def write_output(self, job_id: str, output: str, data: bytes) -> None:
        self.storage.write_bytes(f"{job_id}/outputs/{output}", data)

    def delete_output(self, job_id: str, output: str) -> None:
        self.storage.delete(f"{job_id}/outputs/{output}")

    def read_output(self, job_id: str, output: str) -> bytes:
        return self.storage.read_bytes(f"{job_id}/outputs/{output}")

    def write_result(self, job_id: str, i: int, record: Record) -> None:
        self.storage.write_text(f"{job_id}/results/{_item(i)}.json", record.to_json())

    def load(self, job_id: str) -> StoredJob:
        """Everything needed to resume the job, or to build its result."""
        spec = JobSpec.from_json(self.storage.read_text(f"{job_id}/job.json"))
        state = self.read_state(job_id)
        results = self._load_results(job_id)
        if len(results) < int(state.get("done", 0)):
            # fewer results than the last runner reported: a stale listing (object stores cache
            # them); list again before going on, so progress does not seem to go backwards
            self.storage.fs.invalidate_cache()
            results = self._load_results(job_id)
            if len(results) < int(state.get("done", 0)):
                logger.warning("job %s: %d results found, %d reported; the missing items run again", job_id, len(results), state["done"])
        shared = {n: self.storage.read_bytes(f"{job_id}/shared/{n}") for n in spec.shared}
        return StoredJob(spec, results, state.get("started_at"), shared)

    def _load_results(self, job_id: str) -> dict[int, Record]:
        results: dict[int, Record] = {}
        for name in self.storage.listdir(f"{job_id}/results"):
            if name.endswith(".json") and name[:-5].isdigit():
                with contextlib.suppress(ValueError, TypeError):
                    results[int(name[:-5])] = Record.from_dict(json.loads(self.storage.read_text(f"{job_id}/results/{name}")))
        return results
