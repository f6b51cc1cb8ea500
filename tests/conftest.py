"""Both tiers: a run leaves nothing of its own in the temporary directory.

Every ``stylefleet-*`` entry that appears in the temp dir during the session and is still there
at its end fails the run, by name. Another stylefleet run on the same machine at the same time
shares the temp dir and may be counted: give each run its own ``TMPDIR`` there."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PREFIX = "stylefleet-"


def _ours(folder: Path) -> set[str]:
    return {p.name for p in folder.glob(f"{PREFIX}*")}


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_in_the_temp_dir() -> Iterator[None]:
    folder = Path(tempfile.gettempdir())
    before = _ours(folder)
    yield
    left = sorted(_ours(folder) - before)
    if left:
        pytest.fail(f"the run left these in {folder}: {', '.join(left)}", pytrace=False)
