"""Tiny models of the real generative architectures, built from configs inside the tests.

Nothing is downloaded: a Stable Diffusion folder (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a CLIP tokenizer over a vocabulary written here, a scheduler), a canny
ControlNet folder, and AnimeGANv2 generator weights, all random, all a few MB. They run the
real diffusers and torch code at 64 px in a fraction of a second per step.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path

from tests.samples import ROOT

KEY_TABLE = ROOT / "tests" / "data" / "animeganv2_state_dict_keys.tsv"


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = dict(zip(printable, map(chr, printable)))
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tokenizer_files(folder: Path) -> tuple[Path, Path, dict[str, int]]:
    """vocab.json and merges.txt of a byte-level CLIP tokenizer with no merges: one token per character."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt", vocab


def build_tiny_sd(root: Path, *, max_tokens: int = 16) -> tuple[Path, Path]:
    """Save a tiny SD pipeline and a canny ControlNet under root; returns (base folder, controlnet folder)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    base, controlnet = root / "tiny-sd", root / "tiny-controlnet"
    if (base / "model_index.json").is_file() and (controlnet / "config.json").is_file():
        return base, controlnet
    torch.manual_seed(0)
    vocab_file, merges_file, vocab = write_tokenizer_files(root / "tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_tokens)
    end = vocab["<|endoftext|>"]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end, vocab_size=len(vocab),
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=max_tokens,
        )
    )
    blocks = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 32}
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **blocks,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        **blocks,
    )
    # An ancestral sampler draws fresh noise at every step: the per-request generators matter throughout.
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(base)
    ControlNetModel(
        in_channels=4, cross_attention_dim=32, conditioning_embedding_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), **blocks,
    ).save_pretrained(controlnet)
    return base, controlnet


@cache
def key_table() -> dict[str, tuple[int, ...]]:
    """The published AnimeGANv2 checkpoints' keys and shapes (from the shared key table)."""
    rows = KEY_TABLE.read_text().splitlines()[1:]
    return {key: tuple(ast.literal_eval(shape)) for key, shape in (row.split("\t") for row in rows)}


def random_animegan_state_dict(seed: int = 0) -> dict:
    """A state dict with exactly the published keys and shapes, random values (norm weights near 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in key_table().items():
        if len(shape) == 1 and key.endswith(".weight"):  # GroupNorm scale
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=gen) / fan_in**0.5
    return out


def save_animegan(path: Path, seed: int = 0) -> str:
    """Write a checkpoint like the published ones (a plain state dict); returns its sha256."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        torch.save(random_animegan_state_dict(seed), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
