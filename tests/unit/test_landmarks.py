"""face-mesh: BlazeFace + Face Mesh on LiteRT, on real photos (no Ray)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from skimage import data

from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.landmarks import HEADER, ROW_LENGTH, FaceMeshModel, decode_detections, weighted_nms
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import resolve

CHIN, FOREHEAD, RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 152, 10, 33, 263


@cache
def model() -> FaceMeshModel:
    return FaceMeshModel(resolve("blazeface_full_range"), resolve("face_mesh"), RuntimeOptions(threads=1))


def _rows(*images: np.ndarray) -> list[np.ndarray]:
    out = run_batch(model(), [ModelRequest({"image": i}) for i in images])
    assert all(isinstance(r, np.ndarray) for r in out), out
    return out  # type: ignore[return-value]


def test_the_astronaut_has_one_face_with_chin_below_eyes_below_forehead() -> None:
    [rows] = _rows(data.astronaut())
    assert rows.shape == (1, ROW_LENGTH)
    pts = rows[0, len(HEADER):].reshape(-1, 3)
    x, y, w, h = rows[0, :4]
    assert rows[0, 4] > 0.8 and rows[0, 5] > 0.9  # detector and mesh both sure
    assert 150 < x < 200 and 50 < y < 100 and 80 < w < 140  # her face, not the shuttle
    assert pts[FOREHEAD, 1] < pts[RIGHT_EYE_OUTER, 1] < pts[CHIN, 1]
    assert abs(pts[RIGHT_EYE_OUTER, 1] - pts[LEFT_EYE_OUTER, 1]) < 0.1 * w  # she holds her head level
    assert pts[RIGHT_EYE_OUTER, 0] < pts[LEFT_EYE_OUTER, 0]  # her right eye is on the photo's left


def test_a_rotated_portrait_gives_the_same_points_rotated() -> None:
    """The mesh crop follows the eyes, so a photo turned 90 degrees gives the same face turned."""
    photo = data.astronaut()
    [upright] = _rows(photo)
    [turned] = _rows(np.ascontiguousarray(np.rot90(photo, k=-1)))  # clockwise: (x, y) -> (H-1-y, x)
    assert turned.shape == (1, ROW_LENGTH)
    up = upright[0, len(HEADER):].reshape(-1, 3)[:, :2]
    back = turned[0, len(HEADER):].reshape(-1, 3)[:, :2][:, ::-1].copy()
    back[:, 1] = photo.shape[0] - 1 - back[:, 1]
    assert np.median(np.abs(back - up)) < 3.0  # pixels, on a 105 px face


def test_no_face_in_a_cup_of_coffee_and_batching_changes_nothing() -> None:
    coffee, astronaut = data.coffee(), data.astronaut()
    alone = _rows(coffee)[0], _rows(astronaut)[0]
    together = _rows(coffee, astronaut)
    assert alone[0].shape == (0, ROW_LENGTH)
    assert np.array_equal(together[1], alone[1])  # the same bytes alone and batched: photos stay identical


def test_weighted_nms_merges_overlapping_boxes_by_score() -> None:
    rows = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    merged = weighted_nms(rows, np.array([0.9, 0.3, 0.8], np.float32))
    assert len(merged) == 2
    (first, s1), (second, s2) = merged
    assert s1 == pytest.approx(0.9) and s2 == pytest.approx(0.8)
    assert first[0] == pytest.approx(0.25)  # (0 * 0.9 + 1 * 0.3) / 1.2
    assert decode_detections(np.zeros((2304, 16), np.float32), np.full(2304, -10.0, np.float32), 0.5) == []


def test_a_greyscale_profile_is_found_and_reads_as_turned() -> None:
    from stylefleet.deployments.facegeometry import head_pose, mesh_faces

    [rows] = _rows(data.camera())  # 2-D greyscale, the camera man in profile
    [face] = mesh_faces(rows)
    yaw, _, _ = head_pose(face)
    assert abs(yaw) > 30  # far past any frontal limit
    assert 185 <= face.points[152, 1] <= 200  # his chin, marked by eye at y=190
