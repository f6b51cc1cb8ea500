"""The batch manifest: one JSON line per processed item, shared by the CLI (both engines) and
server-side jobs, so a folder done one way can be resumed, audited or compared the other way.

A record says which input (path relative to the input root, and its sha256), with which style
and params, gave which output (path relative to the output root), through which variant and
model weights, or failed with which error code. The file is append-only; the last record for an
item wins. An item is *done* when its last record is a success whose output still exists, or a
failure caused by the input itself (a corrupt file, a refused param): re-running cannot change
those. Failures of the service (``overloaded``, ``model_unavailable``, a lost connection) are
retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from stylefleet.errors import RETRYABLE_CODES
from stylefleet.retry import RETRYABLE_STATUSES
from stylefleet.storage import Storage, clip_utf8

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"

# Errors that say nothing about the input: the next run tries the item again. The same verdict
# as the retry policy's, for the codes a record can carry (``stylefleet.tools.batch.http``'s included).
TRANSIENT_CODES = RETRYABLE_CODES | {"connection_error", "insufficient_storage"} | {f"http_{status}" for status in RETRYABLE_STATUSES}

OUTPUT_EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Record:
    """One line of ``manifest.jsonl``."""

    input: str
    input_sha256: str
    style: str
    params: dict[str, str]
    status: Literal["ok", "failed"]
    output: str | None = None
    variant: str | None = None
    seed: str | int | None = None  # batch: the X-Stylefleet-Seed header's text; jobs: the int
    model_sha256: str | None = None
    nsfw: bool | None = None  # the safety checker flagged (and blacked out) the output; None: no checker ran
    checks: str | None = None  # id-photo: the quality findings (X-Stylefleet-Checks); None: none ran
    error: dict[str, str] | None = None  # {"code", "message"}
    seconds: float | None = None
    finished_at: str = field(default_factory=now_iso)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return item_key(self.input, self.input_sha256, self.style, self.params)

    @property
    def final(self) -> bool:
        """True when running the item again cannot change the outcome (see module doc)."""
        return self.status == "ok" or (self.error or {}).get("code") not in TRANSIENT_CODES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Record:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def item_key(rel_input: str, input_sha256: str, style: str, params: Mapping[str, str]) -> tuple[str, str, str, str]:
    return (rel_input, input_sha256, style, json.dumps(dict(params), sort_keys=True))


def parse_lines(lines: Iterable[str]) -> list[Record]:
    """Records in file order. A torn last line (the run was killed mid-write) is skipped."""
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            logger.warning("manifest line %d skipped (%s)", n, exc)
    return out


class ManifestIndex:
    """The last record per item key, read from an output root's ``manifest.jsonl``."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.latest: dict[tuple[str, str, str, str], Record] = {}
        self.lines = 0
        for r in records:
            self.add(r)

    @classmethod
    def load(cls, storage: Storage, name: str = MANIFEST) -> ManifestIndex:
        if not storage.exists(name):
            return cls()
        return cls(parse_lines(storage.read_text(name).splitlines()))

    def add(self, record: Record) -> None:
        self.latest[record.key] = record
        self.lines += 1

    def done(self, key: tuple[str, str, str, str], storage: Storage | None = None) -> Record | None:
        """The record that makes this item done, or None when it must (still) run."""
        record = self.latest.get(key)
        if record is None or not record.final:
            return None
        if record.status == "ok" and storage is not None and (record.output is None or not storage.exists(record.output)):
            return None  # the output went missing: make it again
        return record


class ManifestWriter:
    """Appends records as items finish. Local disks get one flushed line per record; object
    stores (no append) get the whole file rewritten at most every ``flush_interval_s``."""

    def __init__(self, storage: Storage, name: str = MANIFEST, flush_interval_s: float = 5.0) -> None:
        self.storage = storage
        self.name = name
        self.flush_interval_s = flush_interval_s
        self._pending: list[str] = []
        self._flushed_at = time.monotonic()

    def write(self, record: Record) -> None:
        if self.storage.local:
            self.storage.append_line(self.name, record.to_json())
            return
        self._pending.append(record.to_json())
        if time.monotonic() - self._flushed_at >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        old = self.storage.read_text(self.name) if self.storage.exists(self.name) else ""
        if old and not old.endswith("\n"):
            old += "\n"
        self.storage.write_text(self.name, old + "".join(line + "\n" for line in self._pending))
        self._pending.clear()
        self._flushed_at = time.monotonic()


def failures_text(records: Iterable[Record]) -> str:
    """``failures.jsonl``: the failed records, one per line (same fields as the manifest)."""
    return "".join(r.to_json() + "\n" for r in records if r.status == "failed")


def output_names(rel_inputs: Iterable[str], fmt: str) -> dict[str, str]:
    """Input path -> output path: the same folders and name, the format's extension; unique by
    construction (compared case-insensitively, as some file systems and unzippers do), and safe
    on any disk: each part of the path is at most ``NAME_MAX_BYTES`` in UTF-8 (``safe_name``).

    Inputs that would collide (``a.jpg`` and ``a.png`` both giving ``a.png``) keep their old
    extension in front of the new one (``a.jpg.png``, ``a.png.png``). Where even that name is
    taken (an input ``a.jpg.png`` beside them) a counter goes before the extension
    (``a.jpg-2.png``). Names depend only on the list given, so a resumed run finds the same ones.
    """
    ext = OUTPUT_EXTENSIONS[fmt]
    rels = list(dict.fromkeys(rel_inputs))
    plain = {rel: _replace_ext(rel, ext) for rel in rels}
    counts: dict[str, int] = {}
    for out in plain.values():
        counts[out.lower()] = counts.get(out.lower(), 0) + 1
    names = {rel: out for rel, out in plain.items() if counts[out.lower()] == 1}
    taken = {out.lower() for out in names.values()}
    for rel in rels:
        if rel in names:
            continue
        candidate, n = rel + ext, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{rel}-{n}{ext}"
        names[rel] = candidate
        taken.add(candidate.lower())
    return _bounded({rel: names[rel] for rel in rels})


# The longest name (one path part) written to disk, in UTF-8 bytes. File systems allow 255; the
# atomic write's temporary file (``stylefleet.storage``) adds up to 14, and a margin is left for
# tools that add their own suffix (``~``, ``.part``).
NAME_MAX_BYTES = 200
_HASH_CHARS = 10
_MAX_EXT_BYTES = 16
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_name(name: str, max_bytes: int = NAME_MAX_BYTES, *, salt: str = "") -> str:
    """One path part as it may go to disk: control characters and separators become ``_``,
    ``""``/``.``/``..`` become ``_``, and a name over ``max_bytes`` in UTF-8 is cut (at a
    character boundary) to its start plus ``-`` and a short hash of the whole name, keeping its
    extension: ``<first words>-1a2b3c4d5e.png``. Short, plain names come back unchanged.
    ``salt`` forces the hashed form (to pick another name when the first is taken)."""
    clean = _UNSAFE.sub("_", name)
    if clean in ("", ".", ".."):
        clean = "_"
    if len(clean.encode("utf-8")) <= max_bytes and not salt:
        return clean
    stem, dot, ext = clean.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) + 1 > _MAX_EXT_BYTES:
        stem, ext = clean, ""
    else:
        ext = "." + ext
    tag = "-" + sha256_hex((name + salt).encode("utf-8"))[:_HASH_CHARS]
    room = max_bytes - len(ext.encode("utf-8")) - len(tag)
    return clip_utf8(stem, room) + tag + ext


def safe_path(rel: str, max_bytes: int = NAME_MAX_BYTES) -> str:
    """``safe_name`` on each ``/``-separated part of a relative path."""
    return "/".join(safe_name(part, max_bytes) for part in rel.split("/"))


def _bounded(names: dict[str, str]) -> dict[str, str]:
    """``names`` with every path made safe (``safe_path``), still unique case-insensitively:
    a shortened name that meets a taken one is hashed again with a counter."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for rel, name in names.items():
        candidate, n = safe_path(name), 1
        while candidate.lower() in taken:
            n += 1
            folder, _, last = name.rpartition("/")
            bounded = safe_name(last, salt=f"-{n}")
            candidate = f"{safe_path(folder)}/{bounded}" if folder else bounded
        out[rel] = candidate
        taken.add(candidate.lower())
    return out


def _replace_ext(rel: str, ext: str) -> str:
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{stem}{ext}" if folder else f"{stem}{ext}"
