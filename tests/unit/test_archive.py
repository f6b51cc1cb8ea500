"""Uploaded archives: zip slip and zip bombs are refused before anything is extracted."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from stylefleet.errors import ArchiveTooLarge, InvalidArchive, UnsafeArchive
from stylefleet.router.archive import check_archive, read_member


def make_zip(members: dict[str, bytes], *, symlink: str | None = None, compression: int = zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    buf.seek(0)
    return buf


def _check(buf: io.BytesIO, max_items: int = 100, max_bytes: int = 1 << 20):
    return check_archive(buf, max_items=max_items, max_uncompressed_bytes=max_bytes)


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/cron.d/evil", "C:/evil.png", "a\\..\\evil.png"])
def test_zip_slip_paths_are_refused(name: str) -> None:
    with pytest.raises(UnsafeArchive):
        _check(make_zip({"ok.png": b"x", name: b"x"}))


def test_symlink_members_are_refused() -> None:
    with pytest.raises(UnsafeArchive, match="symlink"):
        _check(make_zip({"ok.png": b"x"}, symlink="link.png"))


def test_an_archive_expanding_past_the_limit_is_refused_before_extraction() -> None:
    bomb = make_zip({"zeros.png": b"\0" * (8 << 20)})
    assert len(bomb.getvalue()) < 64 << 10  # tiny on the wire
    with pytest.raises(ArchiveTooLarge, match="max_archive_uncompressed_bytes"):
        _check(bomb, max_bytes=4 << 20)


def test_an_archive_with_too_many_members_is_refused() -> None:
    with pytest.raises(ArchiveTooLarge, match="max_items"):
        _check(make_zip({f"{i}.png": b"x" for i in range(11)}), max_items=10)


@pytest.mark.parametrize("payload", [b"not a zip at all", b"PK\x03\x04broken"], ids=["text", "truncated"])
def test_unreadable_archives_are_refused(payload: bytes) -> None:
    with pytest.raises(InvalidArchive):
        _check(io.BytesIO(payload))


def test_folders_resource_forks_and_hidden_files_are_skipped_others_kept_in_order() -> None:
    zf, members = _check(make_zip({"b/2.png": b"22", "__MACOSX/b/._2.png": b"", ".DS_Store": b"", "a.png": b"1", "notes.txt": b"t"}))
    assert [m.name for m in members] == ["b/2.png", "a.png", "notes.txt"]
    assert read_member(zf, members[0]) == b"22"


def test_an_archive_of_nothing_is_refused() -> None:
    with pytest.raises(InvalidArchive, match="no files"):
        _check(make_zip({"__MACOSX/x": b""}))
