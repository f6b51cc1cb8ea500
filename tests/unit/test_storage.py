"""The storage seam under a full disk, the names it writes, and the permissions of private
(job) storage. No Ray; the full disk is ``tests.unit.full_disk``'s fake."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from stylefleet.errors import InsufficientStorage
from stylefleet.manifest import NAME_MAX_BYTES, output_names, safe_name
from stylefleet.router.jobs.store import upload_name
from stylefleet.storage import Storage
from tests.unit.full_disk import fill

CJK_81 = "山" * 81  # 243 bytes in UTF-8: over what the atomic write's temporary name leaves of 255
CJK_100 = "写真" * 50  # 300 bytes
EMOJI = "🐱" * 70  # 280 bytes, four to a character


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [f"{CJK_81}.jpg", f"{CJK_100}.png", f"{EMOJI}.webp", "a" * 300 + ".jpg", f"{CJK_100}/{CJK_81}.jpg", "x" * 260],
    ids=["cjk-243-bytes", "cjk-300-bytes", "emoji", "ascii-300", "long-folder-and-name", "no-extension"],
)
def test_a_long_name_gets_a_bounded_output_that_a_real_disk_takes(tmp_path: Path, rel: str) -> None:
    out = output_names([rel], "png")[rel]
    parts = out.split("/")
    assert all(len(p.encode("utf-8")) <= NAME_MAX_BYTES for p in parts), [len(p.encode()) for p in parts]
    assert out.endswith(".png") and parts[-1].startswith(rel.split("/")[-1][:20])  # recognisable: its start is kept
    Storage(str(tmp_path)).write_bytes(out, b"img")  # the temporary name fits too
    assert _files(tmp_path) == [out]


def test_names_cut_to_the_same_start_stay_unique_and_stable() -> None:
    rels = [f"{CJK_100}{i}.jpg" for i in range(5)] + [f"{CJK_100}0.JPG".upper()]
    names = output_names(rels, "png")
    assert len({n.lower() for n in names.values()}) == len(rels), names
    assert output_names(list(rels), "png") == names  # a resumed run finds the same names


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a\\b.png", "a_b.png"), ("a\x00b\nc.png", "a_b_c.png"), (".", "_"), ("..", "_"), ("", "_"), ("plain.png", "plain.png")],
)
def test_a_name_part_never_carries_a_separator_a_control_character_or_a_dot_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_a_cut_never_splits_a_character_and_keeps_the_extension() -> None:
    name = safe_name("é" * 150 + ".jpeg")
    assert name.endswith(".jpeg") and len(name.encode("utf-8")) <= NAME_MAX_BYTES
    name.encode("utf-8").decode("utf-8")  # valid UTF-8


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("../../etc/passwd.png", "passwd.png"), ("C:\\photos\\a.png", "a.png"), (".png", "image-1.png"), ("", "image-1")],
)
def test_a_client_file_name_is_reduced_to_its_last_part(sent: str, kept: str) -> None:
    assert upload_name(sent, 0, []) == kept


# -- a full disk -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES], ids=["ENOSPC", "EDQUOT", "EACCES"])
def test_a_write_the_disk_cannot_take_is_insufficient_storage_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    store = Storage(str(tmp_path))
    store.write_bytes("a/old.png", b"old")
    fill(monkeypatch, budget=10, code=code)
    with pytest.raises(InsufficientStorage) as info:
        store.write_bytes("a/new.png", b"x" * 100)
    assert info.value.status == 507 and info.value.code == "insufficient_storage"
    assert errno.errorcode[code] in info.value.message and str(tmp_path) not in info.value.message
    with pytest.raises(InsufficientStorage):
        store.write_bytes("a/old.png", b"y" * 100)
    assert _files(tmp_path) == ["a/old.png"] and (tmp_path / "a/old.png").read_bytes() == b"old"


def test_a_line_that_does_not_fit_is_not_appended_in_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage(str(tmp_path))
    store.append_line("m.jsonl", "one")
    fill(monkeypatch, budget=3)
    with pytest.raises(InsufficientStorage):
        store.append_line("m.jsonl", "a longer line")
    assert (tmp_path / "m.jsonl").read_text() == "one\n"


def test_a_file_written_in_steps_leaves_no_temporary_file_when_the_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage(str(tmp_path))
    fill(monkeypatch, budget=1500)
    with pytest.raises(InsufficientStorage), store.writer("job/result.zip") as fh:
        for _ in range(3):
            fh.write(b"z" * 1000)
    assert _files(tmp_path) == []


def test_put_file_from_another_place_leaves_no_temporary_file_when_the_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.zip"
    src.write_bytes(b"z" * 5000)
    store = Storage(str(tmp_path / "root"))
    monkeypatch.setattr("stylefleet.storage._same_device", lambda *_: False)  # another file system: copied
    fill(monkeypatch, budget=100)
    with pytest.raises(InsufficientStorage):
        store.put_file(str(src), "job/result.zip")
    assert _files(tmp_path / "root") == []


# -- permissions -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_storage_makes_files_0600_and_every_folder_it_creates_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Storage(str(tmp_path / "root" / "jobs"), private=True)
        store.write_bytes("j/outputs/a.png", b"x")
        store.append_line("j/m.jsonl", "line")
        with store.writer("j/result.zip") as fh:
            fh.write(b"zip")
    finally:
        os.umask(old)
    root = tmp_path / "root"
    assert {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]} == {
        ".": 0o700,
        "jobs": 0o700,
        "jobs/j": 0o700,
        "jobs/j/outputs": 0o700,
        "jobs/j/outputs/a.png": 0o600,
        "jobs/j/m.jsonl": 0o600,
        "jobs/j/result.zip": 0o600,
    }


def test_ordinary_storage_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        Storage(str(tmp_path)).write_bytes("sub/a.png", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "sub") == 0o755 and _mode(tmp_path / "sub/a.png") == 0o644
