"""Files under a root folder or URI, through fsspec: a local path, ``file://``, ``s3://``, ``gs://``...

Batch outputs, manifests and server-side job state all go through this one seam, so every engine
reads and writes local folders and object stores alike. Two guarantees the callers rely on:

- ``write_bytes`` is atomic: on a local disk through a temporary file in the same folder and a
  rename, on object stores because a single PUT is. An interrupted run never leaves a truncated
  file that a resume would take as done.
- ``append_line`` appends and flushes one line (local disks); object stores cannot append, so
  there the whole file is rewritten (callers batch their lines: ``ManifestWriter``).

A write that the storage cannot take (a full disk or quota, ENOSPC/EDQUOT, a folder that cannot
be written) raises ``InsufficientStorage`` (507 ``insufficient_storage``) and leaves no partial
file behind. ``private=True`` (job storage) makes local files 0600 and the folders it creates
0700; on object stores access is the bucket's policy.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stylefleet.errors import InsufficientStorage


class Storage:
    """Relative POSIX paths under one root. Paths may not escape the root (``..`` is refused)."""

    def __init__(self, root: str, *, private: bool = False, **options: Any) -> None:
        self.fs, path = fsspec.core.url_to_fs(root, **options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = path.rstrip("/") if path not in ("/", "") else path
        self.uri = root
        self.private = private

    @property
    def private(self) -> bool:
        return self._file_mode == 0o600

    @private.setter
    def private(self, value: bool) -> None:
        self._file_mode = 0o600 if value else 0o666  # both under the umask
        self._dir_mode = 0o700 if value else 0o777

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
        with self.writer(rel) as fh:
            fh.write(data)

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[BinaryWriter]:
        """A file written in steps (a large zip), put in place whole when the block ends. Local:
        a temporary file beside the target, renamed; object stores: a local temporary file, put
        once. On any error the temporary file is removed; the storage's own OSErrors (writing
        included) become InsufficientStorage, the block's other errors pass as they are."""
        target = self.path(rel)
        parent = posixpath.dirname(target)
        tmp = ""
        try:
            try:
                if self.local:
                    self._makedirs(parent)
                    tmp = posixpath.join(parent, f".{clip_utf8(posixpath.basename(target), 200)}.{uuid.uuid4().hex[:8]}.tmp")
                else:
                    fd, tmp = tempfile.mkstemp(prefix="stylefleet-", suffix=".tmp")
                    os.close(fd)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), self._file_mode)
            except OSError as exc:
                raise InsufficientStorage.from_os_error(exc, rel) from exc
            with BinaryWriter(fd, rel) as fh:
                yield fh
                _storage_call(os.fsync, rel, fd)
            if self.local:
                _storage_call(os.replace, rel, tmp, target)
            else:
                if parent:
                    _storage_call(self.fs.makedirs, rel, parent, exist_ok=True)
                _storage_call(self.fs.put_file, rel, tmp, target)
                os.unlink(tmp)
            tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def put_file(self, local_path: str, rel: str) -> None:
        """Move a finished local file into place, atomically (a large zip, built on disk)."""
        target = self.path(rel)
        try:
            if self.local and _same_device(local_path, posixpath.dirname(target), self._makedirs):
                if self.private:
                    os.chmod(local_path, 0o600)
                os.replace(local_path, target)
                return
        except OSError as exc:
            raise InsufficientStorage.from_os_error(exc, rel) from exc
        with open(local_path, "rb") as src, self.writer(rel) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def append_line(self, rel: str, line: str) -> None:
        """Append one line (a trailing newline is added). Local: O(1); object stores: rewrite.
        A line that does not fit is cut back off, so the file never ends in half a line."""
        target = self.path(rel)
        data = (line.rstrip("\n") + "\n").encode("utf-8")
        if not self.local:
            old = self.read_bytes(rel) if self.exists(rel) else b""
            self.write_bytes(rel, old + data)
            return
        try:
            self._makedirs(posixpath.dirname(target))
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), self._file_mode)
        except OSError as exc:
            raise InsufficientStorage.from_os_error(exc, rel) from exc
        with BinaryWriter(fd, rel) as fh:
            size = os.fstat(fd).st_size
            try:
                fh.write(data)
            except InsufficientStorage:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise

    def _makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents, each with the storage's folder mode (Python's
        ``os.makedirs`` gives the mode to the last folder only)."""
        if not path or os.path.isdir(path):
            return
        self._makedirs(posixpath.dirname(path.rstrip("/")))
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, self._dir_mode)

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



class BinaryWriter:
    """A file descriptor written through ``os.write`` until every byte is taken (a short write
    is retried); a full disk raises InsufficientStorage naming ``rel``. Enough of a file for
    ``zipfile``."""

    def __init__(self, fd: int, rel: str) -> None:
        self.fd = fd
        self.rel = rel

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        while view:
            n = _storage_call(os.write, self.rel, self.fd, view)
            view = view[n:]
        return len(data)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> BinaryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _storage_call(fn: Callable[..., Any], rel: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, its OSError raised as InsufficientStorage about ``rel``."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        raise InsufficientStorage.from_os_error(exc, rel) from exc


def clip_utf8(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` that is at most ``max_bytes`` in UTF-8 (never half a character)."""
    return text.encode("utf-8")[: max(0, max_bytes)].decode("utf-8", "ignore")


def _same_device(local_path: str, folder: str, makedirs: Callable[[str], None]) -> bool:
    makedirs(folder)
    return os.stat(local_path).st_dev == os.stat(folder).st_dev
