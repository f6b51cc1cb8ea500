"""A disk that fills up, for the storage seam (``stylefleet.storage``) without root or a real
small file system: the module's ``os`` is swapped for one whose ``write`` fails with ENOSPC
(or another errno) once a byte budget is spent, on every file or on the files ``only`` picks.
A short write comes first when the budget ends inside a buffer, as a real disk does."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

import stylefleet.storage


class FullDisk:
    """Stands in for ``os`` inside ``stylefleet.storage``; everything but ``open``/``write`` is the real one."""

    def __init__(self, budget: int = 0, *, code: int = errno.ENOSPC, only: Callable[[str], bool] | None = None) -> None:
        self.budget = budget
        self.code = code
        self.only = only or (lambda _path: True)
        self.paths: dict[int, str] = {}
        self.refused = 0  # writes refused so far

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        self.paths[fd] = str(path)
        return fd

    def write(self, fd: int, data: Any) -> int:
        if not self.only(self.paths.get(fd, "")):
            return os.write(fd, data)
        n = min(len(data), self.budget)
        if n == 0 and len(data):
            self.refused += 1
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= n
        return os.write(fd, data[:n])


def fill(monkeypatch: pytest.MonkeyPatch, budget: int = 0, **kwargs: Any) -> FullDisk:
    """Make the storage seam's disk full after ``budget`` more bytes; ``monkeypatch.undo()`` frees it."""
    disk = FullDisk(budget, **kwargs)
    monkeypatch.setattr(stylefleet.storage, "os", disk)
    return disk
