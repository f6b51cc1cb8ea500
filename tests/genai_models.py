"""Tiny models of the real generative architectures, built from configs inside the tests.

Nothing is downloaded: a Stable Diffusion folder (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a CLIP tokenizer over a vocabulary written here, a scheduler), a canny
ControlNet folder, and AnimeGANv2 generator weights, all random, all a few MB. They run the
real diffusers and torch code at 64 px in a fraction of a second per step. The builders are
``stylefleet.bench.weights``'s, which the benchmarks run at the published sizes.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from stylefleet.bench import weights
from tests.samples import ROOT

KEY_TABLE = ROOT / "tests" / "data" / "animeganv2_state_dict_keys.tsv"


def build_tiny_sd(root: Path) -> tuple[Path, Path]:
    """Save a tiny SD pipeline and a canny ControlNet under root; returns (base folder, controlnet folder)."""
    return weights.save_sd(root, weights.TINY)


@cache
def key_table() -> dict[str, tuple[int, ...]]:
    """The published AnimeGANv2 checkpoints' keys and shapes (from the shared key table)."""
    rows = KEY_TABLE.read_text().splitlines()[1:]
    return {key: tuple(ast.literal_eval(shape)) for key, shape in (row.split("\t") for row in rows)}


def random_animegan_state_dict(seed: int = 0) -> dict:
    """A state dict with exactly the published keys and shapes (from the key table), random values."""
    return weights.random_state_dict(key_table(), seed)


def save_animegan(path: Path, seed: int = 0) -> str:
    """Write a checkpoint like the published ones (a plain state dict); returns its sha256."""
    return weights.save_animegan(path, key_table(), seed)
