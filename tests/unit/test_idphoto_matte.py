"""The matte made for heads: the region the matte is asked for, islands, the soft edge's colours.

No models: the deployments behind the roles are fakes that answer from the pixels they are sent
(the matte is a pointwise function of the photo, so a region's matte is the region of the whole
photo's matte, and the composed output can be checked against the whole-photo path).
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from stylefleet.deployments.batching import ModelRequest, Reply
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.faces import Face
from stylefleet.deployments.idphoto import (
    CHIN_BELOW_BOX_TOP,
    CROWN_ABOVE_BOX_TOP,
    Head,
    IdPhotoModel,
    Region,
    alpha_from_matte,
    choose_face,
    composite,
    estimate_head,
    foreground,
    frame_region,
    keep_subject,
    place,
    render,
)
from stylefleet.deployments.presets import PRESETS, frame_for
from stylefleet.errors import NoFace

BLUE = (67, 142, 219)


def _face(x: float, y: float, size: float) -> Face:
    return Face(x, y, size, size, 40, False)


# --- the region -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", list(PRESETS))
def test_the_region_holds_every_frame_the_head_estimate_can_give(size: str) -> None:
    face, shape = _face(560, 400, 100), (2400, 1200)  # a standing portrait: the face is small
    frame = frame_for(size, 300)
    region = frame_region([face], frame, shape)
    for crown in CROWN_ABOVE_BOX_TOP:
        for chin in CHIN_BELOW_BOX_TOP.values():
            head = Head(crown_y=face.y - crown * face.height, chin_y=face.y + chin * face.height, centre_x=face.centre_x)
            p = place(head, frame, upscale_limit=100)
            left, top = -p.dx / p.scale, -p.dy / p.scale
            right, bottom = left + frame.width_px / p.scale, top + frame.height_px / p.scale
            assert region.x0 <= left and region.y0 <= top and right <= region.x1 and bottom <= region.y1
    assert (region.x1 - region.x0) * (region.y1 - region.y0) < 0.25 * shape[0] * shape[1]


def test_several_faces_give_the_rectangle_around_all_and_no_face_the_whole_photo() -> None:
    frame = frame_for("passport", 300)
    a, b = _face(200, 300, 80), _face(900, 500, 80)
    both = frame_region([a, b], frame, (2000, 1500))
    one, other = frame_region([a], frame, (2000, 1500)), frame_region([b], frame, (2000, 1500))
    assert (both.x0, both.y0, both.x1, both.y1) == (
        min(one.x0, other.x0), min(one.y0, other.y0), max(one.x1, other.x1), max(one.y1, other.y1)
    )
    assert frame_region([], frame, (300, 400)) == Region(0, 0, 400, 300)


def test_the_region_is_clipped_to_the_photo() -> None:
    region = frame_region([_face(10, 5, 200)], frame_for("canada-passport", 300), (500, 400))
    assert (region.x0, region.y0) == (0, 0) and region.x1 <= 400 and region.y1 <= 500


def test_paste_puts_the_region_back_where_it_was_cut() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    region = Region(50, 60, 250, 200)
    part = region.crop(pixels)[:, :, 0]
    assert part.shape == (140, 200)
    full = region.paste(part, (300, 400))
    assert (full[60:200, 50:250] == pixels[60:200, 50:250, 0]).all()
    full[60:200, 50:250] = 0
    assert not full.any()


# --- islands ----------------------------------------------------------------------------------


def _person(shape: tuple[int, int] = (600, 500)) -> np.ndarray:
    """Opacity of a head (ellipse, crown y=60) on shoulders, with a soft 30 % ring of hair."""
    solid = np.zeros(shape, np.uint8)
    cv2.ellipse(solid, (250, 160), (80, 100), 0, 0, 360, 255, -1)
    cv2.rectangle(solid, (120, 250), (380, shape[0] - 1), 255, -1)
    ring = cv2.dilate(solid, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    return np.where(solid > 0, 1.0, np.where(ring > 0, 0.3, 0.0)).astype(np.float32)


def test_islands_not_joined_to_the_face_are_dropped_and_soft_hair_stays() -> None:
    alpha = _person()
    alpha[20:60, 420:480] = 1.0  # a lamp behind the person
    alpha[500:560, 10:60] = 0.4  # a faint blob by the shoulder, not touching it
    out = keep_subject(alpha, _face(200, 120, 100))
    assert not out[20:60, 420:480].any() and not out[500:560, 10:60].any()
    assert (out == _person()).all()  # the person, soft ring and all, unchanged


def test_a_second_person_touching_the_face_region_is_kept() -> None:
    alpha = _person()
    alpha[:, 300:] = np.maximum(alpha[:, 300:], 1.0)  # someone joined to the subject: one component
    assert (keep_subject(alpha, _face(200, 120, 100)) == alpha).all()


# --- the soft edge's colours ------------------------------------------------------------------

HAIR, CURTAIN = (90, 60, 30), (220, 30, 30)


def _hair_over_curtain() -> tuple[np.ndarray, np.ndarray]:
    """Brown hair fading into a red curtain: solid hair on the left, a soft band, curtain on the right."""
    h, w = 120, 240
    alpha = np.clip((160 - np.arange(w, dtype=np.float32)) / 80, 0, 1)[None, :].repeat(h, 0)
    rgb = alpha[:, :, None] * np.float32(HAIR) + (1 - alpha[:, :, None]) * np.float32(CURTAIN)
    return rgb.astype(np.float32), alpha


def test_foreground_takes_the_old_backdrop_out_of_soft_hair() -> None:
    rgb, alpha = _hair_over_curtain()
    ideal = alpha[:, :, None] * np.float32(HAIR) + (1 - alpha[:, :, None]) * np.float32(BLUE)
    soft = (alpha > 0.05) & (alpha < 0.95)
    plain = np.linalg.norm(composite(rgb, alpha, BLUE).astype(np.float32) - ideal, axis=2)[soft].mean()
    cleaned = np.linalg.norm(composite(foreground(rgb, alpha), alpha, BLUE).astype(np.float32) - ideal, axis=2)[soft].mean()
    assert plain > 15 and cleaned < 3  # the red rim on blue, then (nearly) none


def test_foreground_leaves_solid_pixels_alone() -> None:
    rgb, alpha = _hair_over_curtain()
    out = foreground(rgb, alpha)
    solid = (alpha == 0) | (alpha == 1)
    assert (out[solid] == rgb[solid]).all()
    assert foreground(rgb, (alpha > 0.5).astype(np.float32)) is rgb  # a hard matte: nothing to do


# --- the composed path: faces, then the region's matte -----------------------------------------


def _standing_portrait() -> np.ndarray:
    """The synthetic person (grey on black, soft-edged) small in a large photo."""
    photo = np.zeros((1800, 1200, 3), np.uint8)
    person = (_person()[:, :, None] * 128).astype(np.uint8).repeat(3, 2)
    photo[300:900, 350:850] = person
    return photo


FACE_ROW = np.array([[550, 420, 100, 100, 40, 0]], np.float32)  # the head's box in _standing_portrait


def _matte_of(pixels: np.ndarray) -> np.ndarray:
    """A pointwise matte: opacity from brightness (the person is grey 128 on black)."""
    return np.clip(pixels.astype(np.float32) * 2, 0, 255).astype(np.uint8)


class Roles:
    def __init__(self, faces: np.ndarray) -> None:
        self.faces = faces
        self.sent: list[tuple[str, ModelRequest]] = []

    async def __call__(self, role: str, request: ModelRequest) -> Reply:
        self.sent.append((role, request))
        return self.faces if role == "faces" else _matte_of(request.images["image"])


def _compose(roles: Roles, photo: np.ndarray, **params: str) -> Reply:
    return asyncio.run(run_composed(IdPhotoModel(), [ModelRequest({"image": photo}, params)], roles, StageClock(), "sha"))[0]


def test_the_matte_is_asked_for_the_faces_region_only() -> None:
    photo, roles = _standing_portrait(), Roles(FACE_ROW)
    _compose(roles, photo, size="passport")
    assert [role for role, _ in roles.sent] == ["faces", "matte"]
    sent = roles.sent[1][1].images["image"]
    region = frame_region([Face.from_row(FACE_ROW[0])], frame_for("passport", 300), photo.shape[:2])
    assert (sent == region.crop(photo)).all()
    assert sent.size < 0.25 * photo.size


@pytest.mark.parametrize("size", ["passport", "us-passport", "canada-passport"])
def test_the_region_matte_maps_back_to_the_same_photo_as_the_whole_matte(size: str) -> None:
    photo = _standing_portrait()
    out = _compose(Roles(FACE_ROW), photo, size=size, bg_color="#438edb")
    assert isinstance(out, np.ndarray)
    frame = frame_for(size, 300)
    alpha = alpha_from_matte(_matte_of(photo))  # the whole photo's matte, as before regions
    face = choose_face([Face.from_row(FACE_ROW[0])], alpha, "single")
    head = estimate_head(face, keep_subject(alpha, face))
    rgb, a = render(photo, alpha, place(head, frame), (frame.width_px, frame.height_px))
    assert (out == composite(foreground(rgb, a), a, BLUE)).all()
    # the crown where the preset says (the estimator takes the row where the curved top fills its band)
    assert np.flatnonzero(a[:, frame.width_px // 2] >= 0.5)[0] == pytest.approx(frame.top_px, abs=4)


def test_without_a_face_the_matte_is_not_asked() -> None:
    roles = Roles(np.zeros((0, 6), np.float32))
    reply = _compose(roles, _standing_portrait())
    assert isinstance(reply, NoFace) and [role for role, _ in roles.sent] == ["faces"]
