"""A finished job's result: one zip of its outputs (stored, under their output names),
``manifest.jsonl`` and ``failures.jsonl``, built once, the first time it is asked for, and kept
beside the job (``{id}/result.zip``) for every replica to serve."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import Iterator

from stylefleet.manifest import FAILURES, MANIFEST, failures_text
from stylefleet.router.jobs.store import JobStore

CHUNK_BYTES = 1 << 20


class ResultZips:
    """Builds each job's result zip once per job, however many ask for it at the same time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, job_id: str) -> str:
        """The zip's storage path, built now if it is not there yet. The job must be over."""
        rel = f"{job_id}/result.zip"
        async with self._locks.setdefault(job_id, asyncio.Lock()):
            if not await asyncio.to_thread(self.store.storage.exists, rel):
                await asyncio.to_thread(self._build, job_id, rel)
        return rel

    def forget(self, job_id: str) -> asyncio.Lock:
        """The job's build lock, no longer kept (the job is being deleted)."""
        return self._locks.pop(job_id, None) or asyncio.Lock()

    def _build(self, job_id: str, rel: str) -> None:
        """Written to a temporary file beside it, then renamed: no reader sees half a zip. A
        storage too full for it raises InsufficientStorage (507) and leaves no partial file."""
        results = self.store.load(job_id).results
        records = [results[i] for i in sorted(results)]
        with self.store.storage.writer(rel) as fh, zipfile.ZipFile(fh, "w") as zf:
            for record in records:
                if record.status == "ok" and record.output:
                    zf.writestr(_zinfo(record.output), self.store.read_output(job_id, record.output), zipfile.ZIP_STORED)
            zf.writestr(_zinfo(MANIFEST), "".join(r.to_json() + "\n" for r in records), zipfile.ZIP_DEFLATED)
            zf.writestr(_zinfo(FAILURES), failures_text(records), zipfile.ZIP_DEFLATED)

    def chunks(self, rel: str) -> Iterator[bytes]:
        """The zip's bytes, a megabyte at a time (for a streamed response)."""
        with self.store.storage.open(rel, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def size(self, rel: str) -> int:
        return self.store.storage.size(rel)


def _zinfo(name: str) -> zipfile.ZipInfo:
    """A fixed date and mode: the same job gives the same zip bytes."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info
