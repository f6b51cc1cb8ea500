"""Background removal with U^2-Net (``u2netp.onnx``, rembg's release). Pure compute.

Pre/post-processing follows rembg's ``SimpleSession``: RGB resized to 320x320 (Lanczos),
divided by its own maximum, normalised with ImageNet mean/std, NCHW; the first output's map is
min-max normalised per image, scaled to uint8 and resized back with Lanczos. Every request is
320x320 to the network, so a whole batch is one call.

Unlike rembg's ``naive_cutout`` (which premultiplies and darkens soft edges) the cutout keeps
the photo's colours and puts the matte in the alpha channel (straight alpha).

Edge controls (all off by default, so the default output is the plain upscaled matte), applied
in this order: ``alpha_matting`` (a trimap from the matte, its unknown band solved by
closed-form matting as rembg does with pymatting, at most ``MATTING_MAX_SIDE`` px on the
band's bounding box), ``threshold`` (a hard edge), ``erode_px`` (shrink the subject),
``feather_px`` (soften the edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.onnx_session import RuntimeOptions, make_network, run, warm, with_symbolic_batch
from stylefleet.deployments.params import EdgeParams, RemoveBackgroundParams
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.errors import InvalidParams
from stylefleet.imageio import flatten, parse_color, resize_to_max_side

NET_SIDE = 320
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
# Trimap for alpha matting, as rembg's defaults: sure subject where the matte is above 240, sure
# background below 10, both eroded by TRIMAP_BAND_PX at the matting resolution; the rest is solved.
TRIMAP_FOREGROUND = 240
TRIMAP_BACKGROUND = 10
TRIMAP_BAND_PX = 10
# Closed-form matting solves a sparse system over every pixel of the band's bounding box, and
# its cost grows faster than the pixel count: larger images are matted at this longer side and
# the result scaled back up (docs/api.md "Remove background: edges" has the figures).
MATTING_MAX_SIDE = 640


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """One image to the 3x320x320 float32 tensor rembg feeds the network."""
    small = np.asarray(Image.fromarray(rgb, "RGB").resize((NET_SIDE, NET_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    peak = small.max()
    small = small / (peak if peak > 0 else 1.0)
    return ((small - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def postprocess(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The network's 320x320 map to an HxW uint8 matte of ``size`` = (width, height)."""
    lo, hi = float(pred.min()), float(pred.max())
    norm = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    mask = Image.fromarray((norm * 255).astype(np.uint8), "L")
    return np.asarray(mask.resize(size, Image.Resampling.LANCZOS))


def refine_edges(rgb: np.ndarray, alpha: np.ndarray, params: EdgeParams) -> np.ndarray:
    """The edge controls of ``params`` applied to an HxW uint8 alpha, in the module doc's order."""
    if params.alpha_matting:
        alpha = alpha_matte(rgb, alpha)
    if params.threshold is not None:
        alpha = np.where(alpha >= params.threshold, 255, 0).astype(np.uint8)
    if params.erode_px:
        side = 2 * params.erode_px + 1
        alpha = cv2.erode(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
    if params.feather_px:
        alpha = cv2.GaussianBlur(alpha, (0, 0), params.feather_px, borderType=cv2.BORDER_REPLICATE)
    return alpha


def trimap(alpha: np.ndarray, band_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(sure subject, sure background) masks: rembg's thresholds, each eroded by ``band_px``."""
    side = 2 * band_px + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    fg = cv2.erode((alpha > TRIMAP_FOREGROUND).astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    bg = cv2.erode((alpha < TRIMAP_BACKGROUND).astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    return fg.astype(bool), bg.astype(bool)


def alpha_matte(rgb: np.ndarray, alpha: np.ndarray, max_side: int = MATTING_MAX_SIDE) -> np.ndarray:
    """Closed-form matting (Levin et al., pymatting's ``estimate_alpha_cf``) of the trimap's band.

    Sure subject becomes 255 and sure background 0; only the band's bounding box is solved. An
    image over ``max_side`` is matted at that size (trimap, solve and all) and the result scaled
    back up, so the cost is bounded whatever the photo's size.
    """
    h, w = alpha.shape
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return _solve_band(rgb, alpha)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = _solve_band(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), cv2.resize(alpha, size, interpolation=cv2.INTER_AREA))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _solve_band(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    from pymatting import estimate_alpha_cf  # numba-compiled on first use: loaded by the model, not by the router

    h, w = alpha.shape
    band = TRIMAP_BAND_PX
    fg, bg = trimap(alpha, band)
    unknown = ~(fg | bg)
    out = np.where(fg, 255, np.where(bg, 0, alpha)).astype(np.uint8)
    if not unknown.any():
        return out
    ys, xs = np.nonzero(unknown)
    y0, y1 = max(0, ys.min() - band), min(h, ys.max() + band + 1)
    x0, x1 = max(0, xs.min() - band), min(w, xs.max() + band + 1)
    tri = np.where(fg[y0:y1, x0:x1], 1.0, np.where(bg[y0:y1, x0:x1], 0.0, 0.5))
    solved = estimate_alpha_cf(rgb[y0:y1, x0:x1].astype(np.float64) / 255.0, tri)
    here = unknown[y0:y1, x0:x1]
    out[y0:y1, x0:x1][here] = (np.clip(solved[here], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


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
        self._network = make_network(with_symbolic_batch(model.path), runtime)
        self._input = self._network.get_inputs()[0].name

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

    def warm_up(self, max_batch_size: int, max_batch_pixels: int | None) -> None:
        """Batches of 1 to ``max_batch_size``: the network's input has one size whatever the
        photo (the budget bounds pre/post-processing only)."""
        warm(self._network, lambda n: {self._input: np.zeros((n, 3, NET_SIDE, NET_SIDE), np.float32)}, range(1, max_batch_size + 1))

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        out = run(self._network, {self._input: np.stack([p.tensor for p in group])})[0]
        return [o[0] for o in out]

    def matte(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        h, w = prepared.pixels.shape[:2]
        mask = postprocess(raw, (w, h))
        if prepared.pixels.shape[2] == 4:  # already transparent areas stay transparent
            mask = ((mask.astype(np.uint16) * prepared.pixels[:, :, 3] + 127) // 255).astype(np.uint8)
        return refine_edges(prepared.pixels[:, :, :3], mask, prepared.params)

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        mask = self.matte(prepared, raw)
        if prepared.params.only_mask:
            return np.repeat(mask[:, :, None], 3, axis=2)
        cutout = np.dstack([prepared.pixels[:, :, :3], mask])
        if prepared.params.bg_color:
            return flatten(cutout, parse_color(prepared.params.bg_color))
        return cutout
