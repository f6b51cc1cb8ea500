"""Stable Diffusion on diffusers: text-to-image, img2img and ControlNet (canny). Pure compute: no Ray.

One deployment loads a base model once and builds the three pipelines on the same modules
(``from_pipe``), so they share one UNet, VAE and text encoder in memory.

A style is a preset (``DiffusionParams``): pipeline, prompt template, negative prompt, steps
and their bounds, guidance, strength, ControlNet scale, size, and a default seed; clients set
only the subject (``prompt``), ``seed`` and ``steps``. Requests whose pipeline call can be
shared (same pipeline, size, steps, guidance, strength, ControlNet scale: ``Prepared.key``)
go into one call; prompts, negative prompts and images are per item. Each item has its own
``torch.Generator`` seeded with its own seed, drawn on the CPU: the initial noise of
(preset, prompt, seed) is the same alone or in any batch, and on any device.

Where the model folder has a safety checker (and ``safety_checker`` is on), diffusers blacks out
an image it flags; its verdict per image travels with the image (``SafetyChecked``) to the
``X-Stylefleet-Nsfw`` header and the manifest's ``nsfw``.

torch and diffusers are imported when a model is loaded, not with this module: the router
imports the params from here.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from stylefleet.config import DiffusionSource
from stylefleet.deployments.batching import ModelRequest, safety_checked, validate_params
from stylefleet.deployments.log import serve_logger
from stylefleet.deployments.memory import BatchLimiter, probe_largest_batch, run_halving, weight_of
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.params import SIZE_MULTIPLE, DiffusionParams
from stylefleet.deployments.stylize import check_min_side
from stylefleet.errors import InvalidParams, ModelUnavailable
from stylefleet.imageio import flatten

logger = serve_logger(__name__)

PROBE_SIDE = 512
PROBE_MAX_IMAGES = 32


def fit_size(height: int, width: int, box_width: int, box_height: int) -> tuple[int, int]:
    """(width, height) of an image scaled to fit the box, keeping its aspect, sides multiples of 8."""
    scale = min(box_width / width, box_height / height)
    fit_w = max(SIZE_MULTIPLE, int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    fit_h = max(SIZE_MULTIPLE, int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return fit_w, fit_h


def canny_edges(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """White edges on black, HxWx3 uint8: the conditioning image of the canny ControlNets."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The pipelines' [0, 1] floats to uint8, rounded as diffusers' own ``numpy_to_pil``."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@dataclass
class _Prepared:
    key: tuple[Any, ...]  # (pipeline, width, height, steps, guidance, strength, controlnet scale)
    params: DiffusionParams
    prompt: str
    width: int
    height: int
    image: Image.Image | None  # img2img: the input; controlnet-canny: its edges
    weight: int


@dataclass(frozen=True)
class PipelineCall:
    """What one pipeline call received: recorded so that operators (and tests) can see the batching."""

    pipeline: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    strength: float | None
    controlnet_scale: float | None
    batch: int
    seeds: tuple[int, ...]
    vae_slicing: bool


class DiffusionModel:
    """The three pipelines over one set of modules, with memory-aware batching."""

    params_model = DiffusionParams

    def __init__(
        self,
        pipelines: dict[str, Any],
        *,
        checksum: str,
        device: str = "cpu",
        batch_weight_unit_pixel_steps: int = 512 * 512 * 25,
        vae_slicing_min_batch: int = 4,
        limiter: BatchLimiter | None = None,
        setting: str = "diffusion",
    ) -> None:
        self.pipelines = pipelines
        self.checksum = checksum
        self.device = device
        self.unit = batch_weight_unit_pixel_steps
        self.vae_slicing_min_batch = vae_slicing_min_batch
        self.limiter = limiter or BatchLimiter(configured=8)
        self.setting = setting
        self.calls: deque[PipelineCall] = deque(maxlen=256)

    @classmethod
    def load(
        cls, source: DiffusionSource, runtime: RuntimeOptions, *, allow_download: bool = False, setting: str = "diffusion"
    ) -> DiffusionModel:
        """Load the base model (and ControlNet) from folders or the local hub cache; fail naming the setting."""
        pipelines, checksum = load_pipelines(source, runtime, allow_download=allow_download, setting=setting)
        model = cls(
            pipelines,
            checksum=checksum,
            device=runtime.device,
            batch_weight_unit_pixel_steps=source.batch_weight_unit_pixel_steps,
            vae_slicing_min_batch=source.vae_slicing_min_batch,
            limiter=BatchLimiter(configured=8, cooldown_s=source.oom_cooldown_s),
            setting=setting,
        )
        if runtime.device == "cuda" and source.probe_batch_at_start:
            model.probe_batch_limit()
        return model

    # -- the batch runner's three steps ------------------------------------------------------

    def weigh(self, request: ModelRequest) -> int:
        """The request's weight for ``@serve.batch``: pixels x steps in units of the reference image."""
        try:
            params = DiffusionParams.model_validate(request.params)
        except Exception:  # noqa: BLE001 - prepare() reports it; weigh only sizes the batch
            return 1
        width, height = self._output_size(params, request.images.get("image"))
        return weight_of(width * height, params.steps, self.unit)

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: DiffusionParams = validate_params(DiffusionParams, request.params)
        if "{prompt}" in params.prompt_template and not params.prompt.strip():
            raise InvalidParams("prompt: this style needs a prompt (the subject of the image)")
        if params.pipeline not in self.pipelines:
            raise ModelUnavailable(f"this deployment has no ControlNet loaded: set {self.setting}.controlnet")
        pixels = request.images.get("image")
        image: Image.Image | None = None
        if params.pipeline == "text-to-image":
            if pixels is not None:
                raise InvalidParams("image: this style makes images from text and takes no image")
            width, height = params.width, params.height
        else:
            if pixels is None:
                raise InvalidParams("the 'image' file is required")
            check_min_side(pixels)
            width, height = self._output_size(params, pixels)
            rgb = np.asarray(Image.fromarray(flatten(pixels), "RGB").resize((width, height), Image.Resampling.LANCZOS))
            if params.pipeline == "controlnet-canny":
                rgb = canny_edges(rgb, params.canny_low, params.canny_high)
            image = Image.fromarray(rgb, "RGB")
        return _Prepared(
            key=(
                params.pipeline,
                width,
                height,
                params.steps,
                params.guidance_scale,
                params.strength if params.pipeline == "img2img" else None,
                params.controlnet_scale if params.pipeline == "controlnet-canny" else None,
            ),
            params=params,
            prompt=params.full_prompt(),
            width=width,
            height=height,
            image=image,
            weight=weight_of(width * height, params.steps, self.unit),
        )

    def infer(self, group: Sequence[_Prepared]) -> list[tuple[np.ndarray, bool | None]]:
        return run_halving(group, self._call, self.limiter, lambda p: p.weight)

    def finish(self, prepared: _Prepared, raw: tuple[np.ndarray, bool | None]) -> np.ndarray:
        image, nsfw = raw
        pixels = to_uint8(image)
        return pixels if nsfw is None else safety_checked(pixels, nsfw)

    # -- the pipeline call -------------------------------------------------------------------

    def _call(self, group: Sequence[_Prepared]) -> list[tuple[np.ndarray, bool | None]]:
        """One pipeline call for prepared requests with equal keys: each image, and the safety
        checker's verdict on it (None when the model folder has no checker or it is off)."""
        import torch

        first = group[0]
        kind = first.params.pipeline
        pipe = self.pipelines[kind]
        slicing = len(group) >= self.vae_slicing_min_batch
        if slicing:
            pipe.vae.enable_slicing()
        else:
            pipe.vae.disable_slicing()
        kwargs: dict[str, Any] = {
            "prompt": [p.prompt for p in group],
            "negative_prompt": [p.params.negative_prompt for p in group],
            "num_inference_steps": first.params.steps,
            "guidance_scale": first.params.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(p.params.seed) for p in group],
            "output_type": "np",
        }
        if kind == "text-to-image":
            kwargs.update(width=first.width, height=first.height)
        elif kind == "img2img":
            kwargs.update(image=[p.image for p in group], strength=first.params.strength)
        else:
            kwargs.update(
                image=[p.image for p in group],
                width=first.width,
                height=first.height,
                controlnet_conditioning_scale=first.params.controlnet_scale,
            )
        self.calls.append(
            PipelineCall(
                pipeline=kind,
                width=first.width,
                height=first.height,
                steps=first.params.steps,
                guidance_scale=first.params.guidance_scale,
                strength=first.params.strength if kind == "img2img" else None,
                controlnet_scale=first.params.controlnet_scale if kind == "controlnet-canny" else None,
                batch=len(group),
                seeds=tuple(p.params.seed for p in group),
                vae_slicing=slicing,
            )
        )
        out = pipe(**kwargs)
        flags = getattr(out, "nsfw_content_detected", None)
        return [(np.asarray(image), None if flags is None else bool(flags[i])) for i, image in enumerate(out.images)]

    def _output_size(self, params: DiffusionParams, pixels: np.ndarray | None) -> tuple[int, int]:
        if params.pipeline == "text-to-image" or pixels is None:
            return params.width, params.height
        return fit_size(pixels.shape[0], pixels.shape[1], params.width, params.height)

    # -- memory ------------------------------------------------------------------------------

    def probe_batch_limit(self, upper_images: int = PROBE_MAX_IMAGES) -> int:
        """Find the largest batch of 512x512 text-to-image requests that fits; it caps the limit.

        One denoising step is enough: memory per step does not grow with the number of steps,
        and the VAE decode at the end is part of every call.
        """
        probe_params = DiffusionParams.model_validate({"width": PROBE_SIDE, "height": PROBE_SIDE, "steps": 1, "prompt_template": "probe"})
        probe = _Prepared(
            key=("text-to-image",), params=probe_params, prompt="probe", width=PROBE_SIDE, height=PROBE_SIDE, image=None, weight=1
        )

        def try_batch(n: int) -> None:
            self._call([probe] * n)

        largest = probe_largest_batch(try_batch, upper_images)
        self.calls.clear()
        if largest == 0:
            raise ModelUnavailable("not even one 512x512 image fits in GPU memory; free the GPU or use a larger one")
        per_image = weight_of(PROBE_SIDE * PROBE_SIDE, 25, self.unit)  # the limit counts 25-step images
        self.limiter.probed = largest * per_image
        logger.info("largest batch that fits: %d images of 512x512 (batch weight %d)", largest, self.limiter.probed)
        return largest

    def info(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "pipelines": sorted(self.pipelines),
            "pipeline_calls": [asdict(c) for c in self.calls],
            **self.limiter.info(),
        }


# -- loading ------------------------------------------------------------------------------------


def load_pipelines(
    source: DiffusionSource, runtime: RuntimeOptions, *, allow_download: bool, setting: str
) -> tuple[dict[str, Any], str]:
    """The three pipelines on shared modules, and a digest of every weight file they came from."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    base_dir = locate(source.model, f"{setting}.model", allow_download=allow_download, variant=source.variant)
    extra: dict[str, Any] = {} if source.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    try:
        # No dtype at load (its keyword changed name across diffusers versions): cast with .to() later.
        base = StableDiffusionPipeline.from_pretrained(base_dir, variant=source.variant, local_files_only=True, **extra)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelUnavailable(f"{setting}.model: {base_dir} is not a loadable Stable Diffusion folder: {exc}") from None
    folders = [base_dir]
    controlnet = None
    if source.controlnet is not None:
        cn_dir = locate(source.controlnet, f"{setting}.controlnet", allow_download=allow_download, variant=source.variant, controlnet=True)
        try:
            controlnet = ControlNetModel.from_pretrained(cn_dir, variant=source.variant, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelUnavailable(f"{setting}.controlnet: {cn_dir} is not a loadable ControlNet folder: {exc}") from None
        folders.append(cn_dir)
    return assemble_pipelines(base, controlnet, runtime), tree_digest(folders)


def assemble_pipelines(base: Any, controlnet: Any | None, runtime: RuntimeOptions) -> dict[str, Any]:
    """text-to-image (``base``), img2img and, given a ControlNet, controlnet-canny over one set of
    modules, on the runtime's device: fp16 and scaled-dot-product attention on CUDA, fp32 on CPU.
    The loader above and the benchmark (real-size random weights, ``stylefleet.bench.weights``) share it."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Progress bars and deprecation chatter would fill the replica's log, once per request.
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cuda = runtime.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(max(1, runtime.threads or 1))
    pipelines: dict[str, Any] = {
        "text-to-image": base,
        "img2img": StableDiffusionImg2ImgPipeline.from_pipe(base),
    }
    if controlnet is not None:
        pipelines["controlnet-canny"] = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=controlnet)
    device = torch.device("cuda", runtime.gpu_device_id) if cuda else torch.device("cpu")
    for pipe in pipelines.values():
        pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
    if cuda:  # PyTorch's scaled-dot-product attention (flash / memory-efficient kernels)
        base.unet.set_attn_processor(AttnProcessor2_0())
        if controlnet is not None:
            pipelines["controlnet-canny"].controlnet.set_attn_processor(AttnProcessor2_0())
    return pipelines


def locate(ref: str, setting: str, *, allow_download: bool, variant: str | None = None, controlnet: bool = False) -> Path:
    """A model folder: ``ref`` itself, or a hub id's snapshot in the local cache (fetched only if allowed)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or ref.startswith((".", "~")) or ref.count("/") != 1:
        raise ModelUnavailable(
            f"{setting}: no model folder at {ref!r}. Set {setting} to a diffusers folder (save_pretrained "
            "layout) or to a hub id whose files are in the local hub cache"
        )
    try:
        if controlnet:
            from huggingface_hub import snapshot_download

            weights = f"diffusion_pytorch_model{'.' + variant if variant else ''}.safetensors"
            found = snapshot_download(ref, local_files_only=not allow_download, allow_patterns=["config.json", weights])
        else:
            from diffusers import StableDiffusionPipeline

            found = StableDiffusionPipeline.download(ref, local_files_only=not allow_download, variant=variant)
    except Exception as exc:  # noqa: BLE001 - hub errors vary by version; all mean "not here"
        where = "fetch it" if allow_download else "find it in the local hub cache (allow_download is off)"
        raise ModelUnavailable(f"{setting}: could not {where} for hub id {ref!r}: {type(exc).__name__}: {exc}") from None
    return Path(found)


def tree_digest(folders: Sequence[Path]) -> str:
    """sha256 over every file's relative path and sha256, in order: one id for a model folder."""
    outer = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            inner = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    inner.update(block)
            outer.update(f"{path.relative_to(folder).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()
