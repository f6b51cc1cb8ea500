"""ID-photo geometry and checks from face-mesh landmarks, on synthetic faces and mattes (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stylefleet.deployments import facegeometry as fg
from stylefleet.deployments.landmarks import MESH_POINTS
from stylefleet.deployments.presets import frame_for
from stylefleet.errors import EyesClosed, FaceCutOff, MouthOpen, PhotoOutOfSpec, PoseNotFrontal


def _face(cx: float = 200, eye_y: float = 200, eye_gap: float = 100, roll_deg: float = 0.0) -> fg.MeshFace:
    """A flat frontal face: eyes ``eye_gap`` apart at ``eye_y``, chin 1.2 gaps below, forehead 0.8 above."""
    p = np.zeros((MESH_POINTS, 3))
    g = eye_gap
    coords = {
        fg.RIGHT_EYE[0]: (-0.7 * g, 0), fg.RIGHT_EYE[1]: (-0.3 * g, 0), fg.RIGHT_EYE[2]: (-0.5 * g, -0.06 * g),
        fg.RIGHT_EYE[3]: (-0.5 * g, 0.06 * g), fg.LEFT_EYE[0]: (0.7 * g, 0), fg.LEFT_EYE[1]: (0.3 * g, 0),
        fg.LEFT_EYE[2]: (0.5 * g, -0.06 * g), fg.LEFT_EYE[3]: (0.5 * g, 0.06 * g), fg.CHIN: (0, 1.2 * g),
        fg.FOREHEAD: (0, -0.8 * g), fg.CHEEK_RIGHT: (-0.9 * g, 0.3 * g), fg.CHEEK_LEFT: (0.9 * g, 0.3 * g),
        fg.MOUTH_RIGHT: (-0.3 * g, 0.8 * g), fg.MOUTH_LEFT: (0.3 * g, 0.8 * g),
        fg.LIP_UPPER_INNER: (0, 0.8 * g), fg.LIP_LOWER_INNER: (0, 0.8 * g),
    }
    for i, k in enumerate(fg.FACE_OVAL):  # an ellipse through forehead, cheeks and chin
        t = 2 * math.pi * i / len(fg.FACE_OVAL)
        coords.setdefault(k, (0.9 * g * math.sin(t), 0.2 * g - 1.0 * g * math.cos(t)))
    for k, (x, y) in coords.items():
        p[k, :2] = (x, y)
    r = math.radians(roll_deg)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    p[:, :2] = p[:, :2] @ rot.T + (cx, eye_y)
    return fg.MeshFace((cx - g, eye_y - g, 2 * g, 2.4 * g), 0.9, p)


def _head_matte(shape: tuple[int, int], crown_y: int, cx: int = 200, island_y: int | None = None) -> np.ndarray:
    alpha = np.zeros(shape, np.float32)
    alpha[crown_y:, cx - 90:cx + 90] = 1.0  # head and body, one component
    if island_y is not None:
        alpha[island_y:island_y + 20, cx - 60:cx + 60] = 1.0  # old background left in the matte
    return alpha


def test_the_crown_is_the_top_of_the_heads_own_component_not_an_island_above_it() -> None:
    face = _face()
    alpha = _head_matte((600, 400), crown_y=110, island_y=40)
    head = fg.mesh_head(face, alpha)
    assert head.crown_from_matte and head.crown_y == 110
    assert head.chin_y == pytest.approx(320)


def test_a_head_running_into_the_top_edge_gets_the_estimated_crown() -> None:
    face = _face(eye_y=150)
    head = fg.mesh_head(face, _head_matte((600, 400), crown_y=0))
    assert not head.crown_from_matte
    assert head.crown_y == pytest.approx(150 - fg.CROWN_OVER_EYE_CHIN * 120)


def test_a_tilted_face_is_levelled_about_its_eyes() -> None:
    face = _face(roll_deg=10)
    rgb = np.zeros((600, 400, 3), np.uint8)
    _, _, levelled, m = fg.level_eyes(rgb, _head_matte((600, 400), 100), face)
    assert face.roll_deg() == pytest.approx(10, abs=0.01)
    assert abs(levelled.roll_deg()) < 0.01
    right, left = levelled.eye_centres()
    assert (right + left)[1] / 2 == pytest.approx(200, abs=0.01)  # turned about the eyes' midpoint
    assert not np.allclose(m[:, :2], np.eye(2))


def test_the_frame_check_passes_in_band_and_refuses_out_of_band() -> None:
    frame = frame_for("passport", 300)
    h, w = frame.height_px, frame.width_px
    # a head of 0.75 of the height with its crown at 0.09 of it: both in the passport's bands
    crown, chin = 0.09 * h, 0.84 * h
    g = (chin - crown) / 2.2  # _face: chin 1.2 gaps below the eyes, crown set 1.0 gap above
    face = _face(cx=w / 2, eye_y=crown + g, eye_gap=g)
    alpha = _head_matte((h, w), round(crown), cx=w // 2)
    measured = fg.measure_frame(face, alpha)
    assert measured.head_share == pytest.approx(0.75, abs=0.003) and measured.top_share == pytest.approx(0.09, abs=0.003)
    fg.check_frame(measured, frame)
    with pytest.raises(PhotoOutOfSpec, match="chin to crown"):
        fg.check_frame(fg.measure_frame(face, _head_matte((h, w), round(0.2 * h), cx=w // 2)), frame)


def test_findings_have_codes_and_strict_refuses_with_the_first() -> None:
    rules = fg.QualityRules()
    rgb = (np.random.default_rng(0).random((600, 400, 3)) * 255).astype(np.uint8)  # sharp noise
    good = _face()
    q = fg.judge(rgb, good, rules)
    assert q.findings == [] and q.header() == "pass"
    closed = _face()
    closed.points[[fg.RIGHT_EYE[2], fg.RIGHT_EYE[3]], 1] = 200.0
    talking = _face()
    talking.points[fg.LIP_LOWER_INNER, 1] += 40
    turned = _face()
    turned.points[fg.CHEEK_LEFT, 2] = -60  # the left cheek much nearer the camera: yaw
    cases = ((closed, "eyes_closed", EyesClosed), (talking, "mouth_open", MouthOpen), (turned, "pose_not_frontal", PoseNotFrontal))
    for face, code, error in cases:
        q = fg.judge(rgb, face, rules)
        assert [f.code for f in q.findings] == [code]
        fg.enforce(q, "warn")  # reported, not refused
        with pytest.raises(error):
            fg.enforce(q, "strict")
    flat = np.full_like(rgb, 128)
    assert [f.code for f in fg.judge(flat, good, rules).findings] == ["image_blurry"]
    small = _face(eye_gap=40)
    assert "face_too_small" in fg.judge(rgb, small, rules).header()


def test_a_face_cut_by_the_edge_is_refused_even_with_warn() -> None:
    face = _face(cx=20)
    q = fg.judge(np.zeros((600, 400, 3), np.uint8), face, fg.QualityRules())
    assert q.findings[0].code == "face_cut_off"
    with pytest.raises(FaceCutOff):
        fg.enforce(q, "warn")
    fg.enforce(q, "off")


def test_every_preset_has_rules_and_every_code_an_error() -> None:
    from stylefleet.deployments.presets import PRESETS

    assert set(PRESETS) | {"custom"} == set(fg.QUALITY_RULES)
    assert {e.code for e in fg.STRICT_ERRORS.values()} == set(fg.STRICT_ERRORS)
