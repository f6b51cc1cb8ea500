"""Files under a root folder or URI, through fsspec: a local path, ``file://``, ``s3://``, ``gs://``...

Batch outputs, manifests and server-side job state all go through this one seam, so every engine
reads and writes local folders and object stores alike. Two guarantees the callers rely on:

- ``write_bytes`` is atomic: on a local disk through a temporary file in the same folder and a
  rename, on object stores because a single PUT is. An interrupted run never leaves a truncated
  file that a resume would take as done.
- ``append_line`` appends and flushes one line (local disks); object stores cannot append, so
  there the whole file is rewritten (callers batch their lines: ``ManifestWriter``).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Storage:
    """Relative POSIX paths under one root. Paths may not escape the root (``..`` is refused)."""

    def __init__(self, root: str, **options: Any) -> None:
        self.fs, path = fsspec.core.url_to_fs(root, **options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = path.rstrip("/") if path not in ("/", "") else path
        self.uri = root

    def path(self, rel: str) -> str:
        rel = rel.strip("/")
        if not rel:
            return self.root
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{rel!r}: not a plain relative path")
        return posixpath.join(self.root, rel) if self.root else rel

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(rel), mode)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: readers see the old file (or none) or the whole new one, never a part."""
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.local:
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(target, data)

    def put_file(self, local_path: str, rel: str) -> None:
        """Move a finished local file into place, atomically (a large zip, built on disk)."""
        target = self.path(rel)
        if self.local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            os.replace(local_path, target) if _same_device(local_path, target) else _copy_then_replace(local_path, target)
        else:
            self.fs.put_file(local_path, target)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def append_line(self, rel: str, line: str) -> None:
        """Append one line (a trailing newline is added). Local: O(1); object stores: rewrite."""
        target = self.path(rel)
        data = (line.rstrip("\n") + "\n").encode("utf-8")
        if self.local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            with open(target, "ab") as fh:
                fh.write(data)
                fh.flush()
        else:
            old = self.read_bytes(rel) if self.exists(rel) else b""
            self.write_bytes(rel, old + data)

    def delete(self, rel: str, recursive: bool = False) -> None:
        with contextlib.suppress(OSError):
            self.fs.rm(self.path(rel), recursive=recursive)

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``; empty when it does not exist."""
        base = self.path(rel)
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Every file under ``rel``, as paths relative to the root, in sorted order."""
        base = self.path(rel)
        if not self.fs.isdir(base):
            return
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        for found in sorted(self.fs.find(base)):
            found = str(found)
            yield found[len(prefix):] if prefix and found.startswith(prefix) else found.lstrip("/")

    def isdir(self, rel: str = "") -> bool:
        return bool(self.fs.isdir(self.path(rel)))

    def isfile(self, rel: str = "") -> bool:
        return bool(self.fs.isfile(self.path(rel)))

    def full(self, rel: str) -> str:
        """A path or URI a person can read in a message."""
        if self.local:
            return self.path(rel)
        return posixpath.join(self.uri.rstrip("/"), rel)



def _same_device(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(posixpath.dirname(b)).st_dev


def _copy_then_replace(src: str, target: str) -> None:
    import shutil

    tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
