"""Prompt lists as batch work, shared by ``stylefleet batch`` (both engines) and ``POST /v1/jobs``.

A prompt list is text, one prompt per line, or JSONL (``.jsonl``/``.ndjson``), one object per
line with ``prompt`` and any param a client may set on the style (``seed``, ``steps``,
``negative_prompt`` where the preset leaves it open). Blank lines are skipped. A line that cannot
be read fails alone.

Each item is made reproducible before it is sent: its params are completed with the style's
defaults for ``prompt``, ``steps`` and ``negative_prompt`` (where clients may set them), and
with a fixed seed: the line's own, else ``(job seed + index) mod 2**32``, where the job seed is
the run's ``seed`` param or the style's default seed and ``index`` counts items from 0 in file
order. The manifest records those params, so re-running one line with them gives its image again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_SEED = 2**32 - 1
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Params completed from the style's defaults when neither the line nor the run gives them.
RECORDED = ("prompt", "steps", "negative_prompt")
# Never per item: they shape the whole run or the response, not one image.
RUN_ONLY = frozenset({"n", "format", "quality", "variant", "client_id"})


@dataclass(frozen=True)
class PromptItem:
    """One line of a prompt list, completed (``fields``) or failed (``error``)."""

    name: str  # "<list file>:<line>": the manifest's ``input``
    line: int
    text: str  # the line as written: its sha256 is the manifest's ``input_sha256``
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def prompt(self) -> str:
        return self.fields.get("prompt", "")


def is_jsonl(name: str) -> bool:
    return name.lower().endswith(JSONL_SUFFIXES)


def describe_defaults(params: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], set[str]]:
    """(default per param, names a line may set) from a style's description (GET /v1/styles)."""
    described = list(params)
    defaults = {p["name"]: p.get("default") for p in described}
    return defaults, {p["name"] for p in described} - RUN_ONLY


def parse_prompts(
    text: str, list_name: str, *, run_fields: Mapping[str, str], defaults: Mapping[str, Any], allowed: set[str]
) -> list[PromptItem]:
    """The list's items, each with its completed params (see the module doc)."""
    jsonl = is_jsonl(list_name)
    seeded = "seed" in allowed
    job_seed = _int(run_fields.get("seed", defaults.get("seed", 0)))
    items: list[PromptItem] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        name = f"{list_name}:{number}"
        try:
            own = _read_line(line) if jsonl else {"prompt": line}
            unknown = sorted(set(own) - allowed)
            if unknown:
                raise ValueError(f"{', '.join(unknown)}: not a param a line may set (it may set {', '.join(sorted(allowed))})")
        except ValueError as exc:
            items.append(PromptItem(name, number, line, error=f"line {number}: {exc}"))
            continue
        fields = dict(own)
        for key in RECORDED:
            if key in allowed and key not in fields and key not in run_fields and defaults.get(key) is not None:
                fields[key] = _text(defaults[key])
        if seeded and "seed" not in fields:
            fields["seed"] = str((job_seed + len(items)) % (MAX_SEED + 1))
        items.append(PromptItem(name, number, line, fields))
    return items


def output_name(index: int, total: int, prompt: str, ext: str) -> str:
    """``0007-a-red-bicycle.png``: the item's number (unique), then the prompt's first words."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].rstrip("-") or "image"
    return f"{index + 1:0{max(4, len(str(total)))}d}-{slug}{ext}"


def _read_line(line: str) -> dict[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError('a JSONL line is an object, e.g. {"prompt": "a red bicycle", "seed": 7}')
    if any(isinstance(v, (dict, list)) or v is None for v in obj.values()):
        raise ValueError("params are plain values (strings, numbers, booleans)")
    return {k: _text(v) for k, v in obj.items()}


def _text(value: Any) -> str:
    """As a form field carries it: booleans as true/false."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0  # an invalid run seed is refused by the style's own check, not here
