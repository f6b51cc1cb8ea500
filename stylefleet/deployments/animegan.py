"""Photo to anime with AnimeGANv2 (torch). Pure compute: no Ray.

Pre/post-processing follows the PyTorch port (bryandlee/animegan2-pytorch): RGB scaled to
[-1, 1], NCHW, output mapped back with ``(x + 1) / 2``. Any input size: the image is
reflect-padded to a multiple of 4 (the two stride-2 convs) and the result cropped back.
GroupNorm takes statistics over the whole image, so padding two images to a common size would
change both: a batch only groups requests of the same padded size (``Prepared.key``).

The face models (``face_paint_512_*``) were trained on face-centred 512 px crops: with
``face_crop`` (their default) the largest face OpenCV finds is cropped square, with margin,
and resized to 512; without a face the centre square is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
from PIL import Image

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.log import serve_logger
from stylefleet.deployments.memory import BatchLimiter, run_halving
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores
from stylefleet.deployments.params import AnimeParams
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.deployments.stylize import check_min_side, join_alpha, split_alpha
from stylefleet.errors import InvalidParams, ModelUnavailable
from stylefleet.imageio import resize_to_max_side

logger = serve_logger(__name__)

STRIDE = 4
FACE_SIDE = 512
FACE_MARGIN = 2.0  # crop side = this x the detected face box (forehead to chin), as in aligned face crops


def find_face(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal face as (x, y, w, h), or None. OpenCV's Haar cascade: fast, no weights to fetch."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    side = min(grey.shape)
    faces = _face_cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 12),) * 2)
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return int(x), int(y), int(w), int(h)


@cache
def _face_cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]


def face_square(height: int, width: int, face: tuple[int, int, int, int] | None) -> tuple[int, int, int]:
    """(top, left, side) of the square to crop: centred on the face with margin, inside the image."""
    limit = min(height, width)
    if face is None:
        return (height - limit) // 2, (width - limit) // 2, limit
    x, y, w, h = face
    side = min(limit, round(max(w, h) * FACE_MARGIN))
    cx, cy = x + w / 2, y + h / 2
    left = int(np.clip(round(cx - side / 2), 0, width - side))
    top = int(np.clip(round(cy - side / 2), 0, height - side))
    return top, left, side


def crop_face(pixels: np.ndarray) -> np.ndarray:
    """The face-centred square, resized to 512x512 (Lanczos); alpha comes along."""
    top, left, side = face_square(pixels.shape[0], pixels.shape[1], find_face(np.ascontiguousarray(pixels[:, :, :3])))
    square = np.ascontiguousarray(pixels[top : top + side, left : left + side])
    mode = "RGBA" if square.shape[2] == 4 else "RGB"
    return np.asarray(Image.fromarray(square, mode).resize((FACE_SIDE, FACE_SIDE), Image.Resampling.LANCZOS))


def to_input(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHpxWp float32 in [-1, 1], reflect-padded to a multiple of STRIDE."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float32) / 127.5 - 1.0
    ph, pw = (-h) % STRIDE, (-w) % STRIDE
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_image(raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """3xHpxWp in [-1, 1] -> HxWx3 uint8, cropped back to the input size."""
    x = (raw[:, :height, :width].transpose(1, 2, 0).astype(np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass
class _Prepared:
    key: tuple[int, int]
    tensor: np.ndarray
    height: int
    width: int
    alpha: np.ndarray | None


class AnimeGANModel:
    """One AnimeGANv2 checkpoint; batches group equal padded sizes; fp16 on CUDA."""

    params_model = AnimeParams

    def __init__(self, model: ResolvedModel, runtime: RuntimeOptions, *, face_model: bool) -> None:
        import torch

        from stylefleet.deployments.animegan_net import Generator

        self.checksum = model.sha256
        self.face_model = face_model
        self._torch = torch
        self._device = torch.device("cuda" if runtime.device == "cuda" else "cpu")
        self._dtype = torch.float16 if runtime.device == "cuda" else torch.float32
        if runtime.device == "cpu":
            torch.set_num_threads(max(1, runtime.threads or available_cores()))
        generator = Generator()
        try:
            state = torch.load(model.path, map_location="cpu", weights_only=True)
            generator.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise ModelUnavailable(
                f"model {model.spec.name!r} at {model.path} is not an AnimeGANv2 generator state dict: {exc}"
            ) from None
        self._net = generator.to(self._device, self._dtype).eval()
        # Counts requests, like max_batch_size (the Serve wrapper keeps them equal); lowered after an OOM.
        self.limiter = BatchLimiter(configured=8)

    def decode_side(self, params: dict[str, Any]) -> int | None:
        """``max_side`` scales ``image`` first, unless the face crop takes a region of the full photo."""
        p: AnimeParams = validate_params(AnimeParams, params)
        face_crop = self.face_model if p.face_crop is None else p.face_crop
        return None if face_crop else p.max_side

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: AnimeParams = validate_params(AnimeParams, request.params)
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        check_min_side(pixels)
        face_crop = self.face_model if params.face_crop is None else params.face_crop
        pixels = crop_face(pixels) if face_crop else resize_to_max_side(pixels, params.max_side)
        rgb, alpha = split_alpha(pixels)
        tensor = to_input(rgb)
        h, w = rgb.shape[:2]
        return _Prepared(
            key=(int(tensor.shape[1]), int(tensor.shape[2])),
            tensor=tensor,
            height=h,
            width=w,
            alpha=alpha,
        )

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        return run_halving(group, self._forward, self.limiter, lambda _: 1)

    def _forward(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        torch = self._torch
        batch = torch.from_numpy(np.stack([p.tensor for p in group])).to(self._device, self._dtype)
        with torch.inference_mode():
            out = self._net(batch).float().cpu().numpy()
        return list(out)

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        return join_alpha(to_image(raw, prepared.height, prepared.width), prepared.alpha)

    def info(self) -> dict[str, Any]:
        return {"device": str(self._device), "dtype": str(self._dtype).replace("torch.", ""), **self.limiter.info()}
