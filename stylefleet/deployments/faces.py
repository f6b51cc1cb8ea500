"""Face detection with OpenCV's Haar cascades (Viola-Jones). Pure compute, no Ray.

The frontal cascade runs first; only when it finds no face does the profile cascade run, on the
photo and on its mirror (the cascade knows one side only). Each photo is scaled down to
``max_side`` before detection, so a detection's neighbour count (how many overlapping windows
agreed) means the same whatever the upload's resolution, and ``min_neighbors`` can separate faces
from texture: on the scikit-image samples at 512 px, real faces collect 10-54 neighbours and
false hits at most 5.

The answer is an Nx6 float32 array, one row per face in the photo's own pixel coordinates:
``x, y, width, height, neighbours, profile`` (profile is 1.0 for a profile-cascade hit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores
from stylefleet.deployments.params import FaceDetectParams
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.errors import InvalidParams
from stylefleet.imageio import flatten

COLUMNS = ("x", "y", "width", "height", "neighbours", "profile")
SCALE_FACTOR = 1.1
MIN_FACE_PX = 24  # the cascades' own window is 20-24 px


@dataclass(frozen=True)
class Face:
    """One detection, in the photo's pixel coordinates."""

    x: float
    y: float
    width: float
    height: float
    neighbours: int
    profile: bool

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre_x(self) -> float:
        return self.x + self.width / 2

    @classmethod
    def from_row(cls, row: np.ndarray) -> Face:
        x, y, w, h, n, p = (float(v) for v in row)
        return cls(x, y, w, h, int(n), p >= 0.5)


def faces_from_array(rows: np.ndarray) -> list[Face]:
    return [Face.from_row(r) for r in np.asarray(rows, dtype=np.float32).reshape(-1, len(COLUMNS))]


@dataclass
class _Prepared:
    key: str
    grey: np.ndarray  # scaled down to max_side
    scale: float  # original pixels per working pixel
    params: FaceDetectParams


class HaarFaceModel:
    """Frontal, then profile, Haar cascades. Detection is per image; a batch is a loop."""

    params_model = FaceDetectParams

    def __init__(self, frontal: ResolvedModel, profile: ResolvedModel, runtime: RuntimeOptions) -> None:
        self.checksum = f"{frontal.sha256}+{profile.sha256}"
        cv2.setNumThreads(runtime.threads or available_cores())  # the replica's CPU share, as for ONNX Runtime
        self._frontal = cv2.CascadeClassifier(str(frontal.path))
        self._profile = cv2.CascadeClassifier(str(profile.path))
        if self._frontal.empty() or self._profile.empty():
            raise RuntimeError("OpenCV could not load the Haar cascade files")

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: FaceDetectParams = validate_params(FaceDetectParams, request.params)
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        grey = cv2.cvtColor(flatten(pixels), cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale = max(1.0, max(h, w) / params.max_side)
        if scale > 1.0:
            grey = cv2.resize(grey, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA)
        return _Prepared(key="all", grey=grey, scale=scale, params=params)

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        return [self.detect(p.grey, p.params.min_neighbors) for p in group]

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        out = raw.astype(np.float32)
        out[:, :4] *= prepared.scale
        return out

    def detect(self, grey: np.ndarray, min_neighbors: int) -> np.ndarray:
        """Nx6 rows in ``grey``'s coordinates: frontal faces, or profile faces when there are none."""
        frontal = self._run(self._frontal, grey, min_neighbors, profile=False)
        if len(frontal):
            return frontal
        width = grey.shape[1]
        direct = self._run(self._profile, grey, min_neighbors, profile=True)
        mirrored = self._run(self._profile, np.ascontiguousarray(grey[:, ::-1]), min_neighbors, profile=True)
        if len(mirrored):
            mirrored[:, 0] = width - mirrored[:, 0] - mirrored[:, 2]
        return merge_overlapping(np.concatenate([direct, mirrored]))

    @staticmethod
    def _run(cascade: cv2.CascadeClassifier, grey: np.ndarray, min_neighbors: int, *, profile: bool) -> np.ndarray:
        boxes, neighbours = cascade.detectMultiScale2(
            grey, scaleFactor=SCALE_FACTOR, minNeighbors=min_neighbors, minSize=(MIN_FACE_PX, MIN_FACE_PX)
        )
        if len(boxes) == 0:
            return np.zeros((0, len(COLUMNS)), np.float32)
        rows = np.column_stack([np.asarray(boxes, np.float32), np.asarray(neighbours, np.float32)])
        return np.column_stack([rows, np.full(len(rows), 1.0 if profile else 0.0, np.float32)])


def merge_overlapping(rows: np.ndarray, iou: float = 0.3) -> np.ndarray:
    """Drop any box overlapping a stronger one (the same face seen by the direct and mirrored pass)."""
    kept: list[np.ndarray] = []
    for row in sorted(rows, key=lambda r: -float(r[4])):
        if all(box_iou(row, k) < iou for k in kept):
            kept.append(row)
    return np.array(kept, np.float32).reshape(-1, len(COLUMNS))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, aw, ah = (float(v) for v in a[:4])
    bx0, by0, bw, bh = (float(v) for v in b[:4])
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
