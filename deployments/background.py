"""Background removal with U^2-Net (``u2netp.onnx``, rembg's release). Pure compute.

Pre/post-processing follows rembg's ``SimpleSession``: RGB resized to 320x320 (Lanczos),
divided by its own maximum, normalised with ImageNet mean/std, NCHW; the first output's map is
min-max normalised per image, scaled to uint8 and resized back with Lanczos. Every request is
320x320 to the network, so a whole batch is one call.

Unlike rembg's ``naive_cutout`` (which premultiplies and darkens soft edges) the cutout keeps
the photo's colours and puts the matte in the alpha channel (straight alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.batching import ModelRequest, validate_params
from deployments.onnx_session import RuntimeOptions, make_session, run, with_symbolic_batch
from deployments.registry import ResolvedModel
from stylefleet.errors import InvalidParams
from stylefleet.imageio import flatten, parse_color, resize_to_max_side

NET_SIDE = 320
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)


class RemoveBackgroundParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bg_color: str | None = Field(
        None, description="flatten onto this colour (#rrggbb, 'white' or 'black'); default: transparent"
    )
    max_side: int = Field(4096, ge=8, le=8192, description="longer side of the output, in pixels")
    only_mask: bool = Field(False, description="return the matte itself (white = subject) instead of the cutout")

    @field_validator("bg_color")
    @classmethod
    def _colour(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_color(value)
            return value
        return None


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """One image to the 3x320x320 float32 tensor rembg feeds the network."""
    small = np.asarray(Image.fromarray(rgb, "RGB").resize((NET_SIDE, NET_SIDE), Image.LANCZOS), dtype=np.float64)
    peak = small.max()
    small = small / (peak if peak > 0 else 1.0)
    return ((small - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def postprocess(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The network's 320x320 map to an HxW uint8 matte of ``size`` = (width, height)."""
    lo, hi = float(pred.min()), float(pred.max())
    norm = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    mask = Image.fromarray((norm * 255).astype(np.uint8), "L")
    return np.asarray(mask.resize(size, Image.LANCZOS))


@dataclass
class _Prepared:
    key: str
    tensor: np.ndarray
    pixels: np.ndarray  # HxWx3/4 after max_side
    params: RemoveBackgroundParams


class U2NetModel:
    params_model = RemoveBackgroundParams

    def __init__(self, model: ResolvedModel, runtime: RuntimeOptions) -> None:
        self.checksum = model.sha256
        self._session = make_session(with_symbolic_batch(model.path), runtime)
        self._input = self._session.get_inputs()[0].name

    def decode_side(self, params: dict[str, Any]) -> int:
        """``image`` is scaled to ``max_side`` first: uploads decode no larger (batching.decoded)."""
        return int(validate_params(RemoveBackgroundParams, params).max_side)

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: RemoveBackgroundParams = validate_params(RemoveBackgroundParams, request.params)
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        pixels = resize_to_max_side(pixels, params.max_side)
        return _Prepared(key="all", tensor=preprocess(flatten(pixels)), pixels=pixels, params=params)

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        out = run(self._session, {self._input: np.stack([p.tensor for p in group])})[0]
        return [o[0] for o in out]

    def matte(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        h, w = prepared.pixels.shape[:2]
        mask = postprocess(raw, (w, h))
        if prepared.pixels.shape[2] == 4:  # already transparent areas stay transparent
            mask = ((mask.astype(np.uint16) * prepared.pixels[:, :, 3] + 127) // 255).astype(np.uint8)
        return mask

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        mask = self.matte(prepared, raw)
        if prepared.params.only_mask:
            return np.repeat(mask[:, :, None], 3, axis=2)
        cutout = np.dstack([prepared.pixels[:, :, :3], mask])
        if prepared.params.bg_color:
            return flatten(cutout, parse_color(prepared.params.bg_color))
        return cutout
