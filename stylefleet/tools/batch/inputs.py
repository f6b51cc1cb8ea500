"""What a batch run works on: every image under a folder (recursively) or the files a list names."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import fsspec

from stylefleet.prompts import PromptItem
from stylefleet.storage import Storage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


class InputError(ValueError):
    """INPUT cannot be used (missing, empty, unreadable list): a usage error, exit status 2."""


@dataclass(frozen=True)
class Item:
    rel: str  # path relative to the input root: the manifest's ``input`` and the mirror's key
    source: str  # where to read it: a local path or a URI
    prompt: PromptItem | None = None  # a line of a prompt list (prompt-only styles): no file to read


def prompt_items(items: list[PromptItem]) -> list[Item]:
    return [Item(p.name, "", p) for p in items]


def is_image_name(rel: str) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return False  # hidden files and folders (.DS_Store, .git, our own temp files)
    return posixpath.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def find_inputs(input_path: str, *, exclude: str | None = None) -> list[Item]:
    """Images under a folder (recursively, sorted), or the lines of a list file.

    ``exclude`` is an output root that lies inside the input folder: it is not walked.
    """
    storage = Storage(input_path)
    if storage.isdir():
        skip = _relative_inside(storage, exclude)
        items = [
            Item(rel, storage.full(rel))
            for rel in storage.walk_files()
            if is_image_name(rel) and not (skip and (rel == skip or rel.startswith(skip + "/")))
        ]
    elif storage.isfile():
        items = _from_list(input_path)
    else:
        raise InputError(f"{input_path}: no such folder or list file")
    if not items:
        raise InputError(f"{input_path}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return items


def _relative_inside(storage: Storage, other: str | None) -> str | None:
    if other is None or not storage.local:
        return None
    root, target = os.path.abspath(storage.root), os.path.abspath(fsspec.core.url_to_fs(other)[1])
    if target != root and target.startswith(root + os.sep):
        return os.path.relpath(target, root).replace(os.sep, "/")
    return None


def _from_list(list_path: str) -> list[Item]:
    """One path or URI per line (blank lines and ``#`` comments skipped); relative paths are
    relative to the list file's folder. Outputs mirror the paths below their common folder."""
    with fsspec.open(list_path, "rt", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    base = posixpath.dirname(list_path)
    sources = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not posixpath.isabs(line):
            line = posixpath.normpath(posixpath.join(base, line)) if base else line
        sources.append(line)
    if not sources:
        return []
    if len({s.split("://", 1)[0] if "://" in s else "" for s in sources}) > 1:
        raise InputError(f"{list_path}: mix of local paths and URIs; use one kind")
    bodies = [s.split("://", 1)[1] if "://" in s else os.path.abspath(s) for s in sources]
    common = posixpath.dirname(bodies[0]) if len(bodies) == 1 else posixpath.commonpath(bodies)
    if common in bodies:  # a single file or files equal to the prefix
        common = posixpath.dirname(common)
    rels = [posixpath.relpath(b, common) if common else b.lstrip("/") for b in bodies]
    if len(set(rels)) != len(rels):
        raise InputError(f"{list_path}: a file is listed twice")
    return [Item(rel, src) for rel, src in zip(rels, sources)]


def read_source(source: str) -> bytes:
    if "://" not in source:
        with open(source, "rb") as fh:
            return fh.read()
    with fsspec.open(source, "rb") as fh:
        return fh.read()
