"""Checking an uploaded zip before anything in it is written. Pure: no Ray, no HTTP.

Refused outright, before a byte is extracted:

- zip slip: a member whose path is absolute, has a drive letter or a ``..`` part, uses
  backslashes, or is a symlink (``unsafe_archive``); members are written under generated names
  anyway, so a path only ever becomes the *name* of an output inside the result zip;
- zip bombs: more members than ``max_items``, or declared uncompressed sizes adding up to more
  than ``max_uncompressed_bytes`` (``archive_too_large``). Extraction reads at most the declared
  size of each member, so a member cannot expand beyond what was checked;
- anything that is not a readable zip, is encrypted, or repeats a member (``invalid_archive``).

Members that are not images are not refused here: they become items, and fail one by one with
the decoder's own error (``unsupported_media_type`` / ``invalid_image``), like any upload.
Folders, ``__MACOSX/`` resource forks and hidden files (``.DS_Store``) are skipped.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from typing import IO

from stylefleet.errors import ArchiveTooLarge, InvalidArchive, UnsafeArchive

_DRIVE = re.compile(r"^[A-Za-z]:")
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str  # the safe relative path inside the archive
    info: zipfile.ZipInfo

    @property
    def size(self) -> int:
        return self.info.file_size


def safe_name(name: str) -> str:
    """The member's path if it stays inside the archive's root; else UnsafeArchive."""
    if "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name):
        raise UnsafeArchive(f"archive member {name!r} has an absolute or non-portable path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise UnsafeArchive(f"archive member {name!r} points outside the archive (zip slip)")
    return "/".join(parts)


def _skipped(name: str) -> bool:
    parts = name.split("/")
    return name.endswith("/") or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts if p)


def check_archive(fileobj: IO[bytes], *, max_items: int, max_uncompressed_bytes: int) -> tuple[zipfile.ZipFile, list[Member]]:
    """Open and check an archive; returns it with the members to extract, in archive order."""
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArchive(f"the 'archive' file is not a readable zip: {exc}") from None
    infos = archive.infolist()
    if len(infos) > max_items:
        raise ArchiveTooLarge(f"the archive holds {len(infos)} members; the limit is {max_items} (jobs.max_items)")
    declared = sum(i.file_size for i in infos)
    if declared > max_uncompressed_bytes:
        raise ArchiveTooLarge(
            f"the archive expands to {declared} bytes; the limit is {max_uncompressed_bytes} (jobs.max_archive_uncompressed_bytes)"
        )
    members: list[Member] = []
    seen: set[str] = set()
    for info in infos:
        name = safe_name(info.filename)  # every member is checked, skipped ones too
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchive(f"archive member {info.filename!r} is a symlink")
        if _skipped(info.filename) or info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise InvalidArchive(f"archive member {info.filename!r} is encrypted")
        if name.lower() in seen:
            raise InvalidArchive(f"archive member {name!r} appears twice")
        seen.add(name.lower())
        members.append(Member(name, info))
    if not members:
        raise InvalidArchive("the archive holds no files")
    return archive, members


def read_member(archive: zipfile.ZipFile, member: Member) -> bytes:
    """The member's bytes, never more than its declared size (checked against the limits)."""
    out = bytearray()
    with archive.open(member.info) as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            out += chunk
            if len(out) > member.size:
                raise InvalidArchive(f"archive member {member.name!r} expands beyond its declared size")
    return bytes(out)

