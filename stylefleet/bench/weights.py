"""The generative models at their real size (or at toy size), with random weights: no download.

Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder) and its canny ControlNet are built
from the published architecture configs, written below as data (``SD15``); ``TINY`` is the same
builder at a few MB, which the tests serve. The AnimeGANv2 generator has one size, the published
one (``stylefleet.deployments.animegan_net``). Random weights give noise for pictures, but the compute (every
layer, every shape, every kernel) is what the published weights would run.

The tokenizer is byte-level CLIP with no merges (one token per character) over a vocabulary
written here; its ids all fall inside the real 49408-entry embedding, and prompts are padded to
the same 77 positions as with the published tokenizer, so the text encoder's work is the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTE = "random weights at the published architecture's size: pictures are noise, the compute is identical"
TINY_NOTE = "random weights; Stable Diffusion at toy size (the tests' tiny architecture), AnimeGANv2 at its only size: pictures are noise"


def weights_note(arch: SdArch) -> str:
    return NOTE if arch.name != "tiny" else TINY_NOTE


@dataclass(frozen=True)
class SdArch:
    """The shape of a Stable Diffusion 1.x model and its canny ControlNet."""

    name: str
    # CLIP text encoder
    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_layers: int
    max_tokens: int
    text_vocab: int | None  # None: as large as the tokenizer's vocabulary
    text_act: str
    # UNet (and the ControlNet, which copies its down half)
    unet_blocks: tuple[int, ...]
    unet_layers_per_block: int
    unet_down: tuple[str, ...]
    unet_up: tuple[str, ...]
    cross_attention_dim: int
    attention_head_dim: int
    sample_size: int
    # AutoencoderKL
    vae_blocks: tuple[int, ...]
    vae_layers_per_block: int
    controlnet_embedding: tuple[int, ...]
    norm_num_groups: int = 32


# runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/ config.json) and
# lllyasviel/sd-controlnet-canny (config.json); the text encoder is openai/clip-vit-large-patch14's.
SD15 = SdArch(
    name="sd15",
    text_hidden=768,
    text_intermediate=3072,
    text_heads=12,
    text_layers=12,
    max_tokens=77,
    text_vocab=49408,
    text_act="quick_gelu",
    unet_blocks=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    unet_down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    unet_up=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    sample_size=64,
    vae_blocks=(128, 256, 512, 512),
    vae_layers_per_block=2,
    controlnet_embedding=(16, 32, 96, 256),
)

# The tests' models: the same code paths at 64 px in a fraction of a second per step.
TINY = SdArch(
    name="tiny",
    text_hidden=32,
    text_intermediate=37,
    text_heads=4,
    text_layers=2,
    max_tokens=16,
    text_vocab=None,
    text_act="quick_gelu",
    unet_blocks=(32, 64),
    unet_layers_per_block=1,
    unet_down=("DownBlock2D", "CrossAttnDownBlock2D"),
    unet_up=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    sample_size=32,
    vae_blocks=(32, 64),
    vae_layers_per_block=1,
    controlnet_embedding=(16, 32),
)

ARCHS = {a.name: a for a in (SD15, TINY)}


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


@dataclass
class SdParts:
    """A base pipeline (text-to-image, on the CPU in fp32) and a canny ControlNet over the same arch."""

    pipeline: Any  # diffusers.StableDiffusionPipeline
    controlnet: Any  # diffusers.ControlNetModel
    arch: SdArch


def build_sd(arch: SdArch, *, seed: int = 0, tokenizer_dir: Path | None = None) -> SdParts:
    """Build the modules of ``arch`` with random weights (seeded), in memory."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with contextlib.ExitStack() as scratch:
        # The tokenizer reads its two files here, once: a folder made only for them goes after.
        folder = tokenizer_dir or Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="stylefleet-tokenizer-")))
        vocab_file, merges_file, vocab = write_tokenizer_files(folder)
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=arch.max_tokens)
    end = vocab["<|endoftext|>"]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end,
            vocab_size=arch.text_vocab or len(vocab), hidden_size=arch.text_hidden,
            intermediate_size=arch.text_intermediate, num_attention_heads=arch.text_heads,
            num_hidden_layers=arch.text_layers, max_position_embeddings=arch.max_tokens, hidden_act=arch.text_act,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=arch.sample_size, in_channels=4, out_channels=4, cross_attention_dim=arch.cross_attention_dim,
        down_block_types=arch.unet_down, up_block_types=arch.unet_up, block_out_channels=arch.unet_blocks,
        layers_per_block=arch.unet_layers_per_block, norm_num_groups=arch.norm_num_groups,
        attention_head_dim=arch.attention_head_dim,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(arch.vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(arch.vae_blocks),
        block_out_channels=arch.vae_blocks, layers_per_block=arch.vae_layers_per_block,
        norm_num_groups=arch.norm_num_groups,
    )
    # An ancestral sampler draws fresh noise at every step: the per-request generators matter throughout.
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    controlnet = ControlNetModel(
        in_channels=4, cross_attention_dim=arch.cross_attention_dim,
        conditioning_embedding_out_channels=arch.controlnet_embedding, down_block_types=arch.unet_down,
        block_out_channels=arch.unet_blocks, layers_per_block=arch.unet_layers_per_block,
        norm_num_groups=arch.norm_num_groups, attention_head_dim=arch.attention_head_dim,
    )
    return SdParts(pipeline=pipeline, controlnet=controlnet, arch=arch)


def save_sd(root: Path, arch: SdArch, *, seed: int = 0, half: bool = False) -> tuple[Path, Path]:
    """Save ``arch`` with random weights as diffusers folders under ``root``: (base, controlnet).

    Kept if already there. ``half`` stores fp16 weights (half the disk for the real size; the
    loader casts to the device's dtype anyway).
    """
    base, controlnet = root / f"{arch.name}-sd", root / f"{arch.name}-controlnet"
    if (base / "model_index.json").is_file() and (controlnet / "config.json").is_file():
        return base, controlnet
    parts = build_sd(arch, seed=seed, tokenizer_dir=root / "tokenizer-src")
    if half:
        import torch

        parts.pipeline.to(dtype=torch.float16)
        parts.controlnet.to(dtype=torch.float16)
    parts.pipeline.save_pretrained(base)
    parts.controlnet.save_pretrained(controlnet)
    return base, controlnet


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, Any]:
    """Random tensors of the given shapes: norm scales near 1, biases small, conv weights 1/sqrt(fan-in)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 1 and key.endswith(".weight"):  # GroupNorm scale
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=gen) / fan_in**0.5
    return out


def animegan_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the AnimeGANv2 generator (the published checkpoints' own)."""
    from stylefleet.deployments.animegan_net import Generator

    return {k: tuple(v.shape) for k, v in Generator().state_dict().items()}


def save_animegan(path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> str:
    """Write a checkpoint like the published ones (a plain state dict); returns its sha256."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        torch.save(random_state_dict(shapes or animegan_shapes(), seed), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
