"""ID photos, the pure parts: presets, params, geometry, compositing, print sheet, encoding. No models."""

from __future__ import annotations

import io
import typing

import cv2
import numpy as np
import pytest
from PIL import Image

from stylefleet.deployments.batching import InvalidParams, OutputSpec, validate_params
from stylefleet.deployments.faces import Face, merge_overlapping
from stylefleet.deployments.idphoto import (
    MAX_UPSCALE,
    Head,
    IdPhotoParams,
    alpha_from_matte,
    choose_face,
    composite,
    encode_within,
    estimate_head,
    make_sheet,
    place,
    render,
    sheet_layout,
)
from stylefleet.deployments.params import BG_COLORS
from stylefleet.deployments.presets import PRESETS, Frame, PresetName, SizeName, frame_for
from stylefleet.errors import FaceTooSmall, MaxKbTooSmall, MultipleFaces, NoFace
from tests import samples
from tests.idphoto_checks import count_copies

# --- presets ----------------------------------------------------------------------------------


def test_the_preset_table_and_the_param_enum_agree() -> None:
    assert list(PRESETS) == list(typing.get_args(PresetName))
    assert list(typing.get_args(SizeName)) == [*PRESETS, "custom"]


@pytest.mark.parametrize(
    ("size", "pixels"),
    [
        ("1-inch", (295, 413)),
        ("small-2-inch", (390, 567)),
        ("2-inch", (413, 579)),
        ("passport", (413, 531)),
        ("us-passport", (600, 600)),
    ],
)
def test_each_preset_has_its_pixels_at_300_dpi(size: str, pixels: tuple[int, int]) -> None:
    frame = frame_for(size, 300)
    assert (frame.width_px, frame.height_px) == pixels


@pytest.mark.parametrize("size", list(PRESETS))
def test_each_preset_documents_a_standard_and_sane_shares(size: str) -> None:
    preset = PRESETS[size]
    assert preset.standard and preset.source
    assert 0.4 < preset.head_share[0] < preset.head_share[1] < 0.85
    assert 0.0 < preset.top_share[0] < preset.top_share[1] < 0.2


def test_presets_scale_with_dpi() -> None:
    assert (frame_for("passport", 600).width_px, frame_for("passport", 600).height_px) == (827, 1063)


def test_custom_size_by_mm_and_dpi_or_by_pixels() -> None:
    assert (
        frame_for("custom", 300, width_mm=40, height_mm=50).width_px,
        frame_for("custom", 300, width_mm=40, height_mm=50).height_px,
    ) == (472, 591)
    by_px = frame_for("custom", 72, width_px=200, height_px=250)
    assert (by_px.width_px, by_px.height_px, by_px.dpi) == (200, 250, 72)


# --- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"size": "custom"}, "size=custom needs"),
        ({"size": "custom", "width_mm": 30}, "size=custom needs"),
        ({"size": "custom", "width_mm": 30, "height_mm": 40, "width_px": 300, "height_px": 400}, "one pair"),
        ({"size": "passport", "width_px": 300}, "only go with size=custom"),
        ({"size": "custom", "width_mm": 300, "height_mm": 300, "dpi": 1200}, "each side must be"),
        ({"size": "a4"}, "size"),
        ({"bg_color": "green-ish"}, "bg_color"),
        ({"dpi": 10}, "dpi"),
        ({"max_kb": 0}, "max_kb"),
        ({"layout": "a4"}, "layout"),
        ({"face": "all"}, "face"),
        ({"surprise": 1}, "surprise"),
    ],
    ids=[
        "custom-nothing",
        "custom-half",
        "custom-both",
        "preset-with-px",
        "custom-huge",
        "unknown-size",
        "bad-colour",
        "low-dpi",
        "zero-kb",
        "bad-layout",
        "bad-face",
        "unknown",
    ],
)
def test_bad_params_name_the_problem(params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        validate_params(IdPhotoParams, params)


@pytest.mark.parametrize(
    ("name", "rgb"), [("white", (255, 255, 255)), ("blue", (67, 142, 219)), ("red", (255, 0, 0)), ("#102030", (16, 32, 48))]
)
def test_background_colours(name: str, rgb: tuple[int, int, int]) -> None:
    from stylefleet.deployments.idphoto import background

    assert background(name) == rgb
    assert name in BG_COLORS or name.startswith("#")


def test_form_strings_are_coerced() -> None:
    p = validate_params(IdPhotoParams, {"size": "custom", "width_px": "300", "height_px": "400", "dpi": "600", "max_kb": "50"})
    assert (p.frame().width_px, p.frame().height_px, p.dpi, p.max_kb) == (300, 400, 600, 50)


# --- geometry ---------------------------------------------------------------------------------

PASSPORT = frame_for("passport", 300)


def _face(x: float, y: float, size: float, profile: bool = False) -> Face:
    return Face(x, y, size, size, 40, profile)


def test_place_gives_the_head_its_height_crown_margin_and_centre() -> None:
    head = Head(crown_y=100, chin_y=400, centre_x=250)
    p = place(head, PASSPORT)
    assert p.scale * head.height == pytest.approx(PASSPORT.head_px)
    assert p.scale * head.crown_y + p.dy == pytest.approx(PASSPORT.top_px)
    assert p.scale * head.centre_x + p.dx == pytest.approx(PASSPORT.width_px / 2)


def test_a_head_needing_more_than_the_upscale_limit_is_face_too_small() -> None:
    small = Head(crown_y=10, chin_y=10 + PASSPORT.head_px / (MAX_UPSCALE + 0.1), centre_x=50)
    with pytest.raises(FaceTooSmall, match="enlargement"):
        place(small, PASSPORT)
    place(Head(10, 10 + PASSPORT.head_px / (MAX_UPSCALE - 0.1), 50), PASSPORT)  # just inside: fine


def _synthetic_portrait() -> tuple[np.ndarray, np.ndarray]:
    """A grey 'person' on black: an ellipse head (crown y=60, chin y=260) on a body, and its matte."""
    matte = np.zeros((600, 500), np.uint8)
    cv2.ellipse(matte, (250, 160), (80, 100), 0, 0, 360, 255, -1)
    cv2.rectangle(matte, (120, 250), (380, 599), 255, -1)
    rgb = np.dstack([matte // 2] * 3)
    return rgb, matte


def test_estimate_head_takes_the_crown_from_the_matte() -> None:
    _, matte = _synthetic_portrait()
    head = estimate_head(_face(200, 120, 100), alpha_from_matte(matte))
    assert head.crown_y == pytest.approx(60, abs=2)
    assert head.chin_y == pytest.approx(120 + 1.02 * 100)
    assert head.centre_x == 250


def test_estimate_head_falls_back_when_the_hair_touches_the_top_edge() -> None:
    _, matte = _synthetic_portrait()
    head = estimate_head(_face(200, 20, 100), alpha_from_matte(matte[100:]))  # the top 40 px of the head cut off
    assert head.crown_y == pytest.approx(20 - 0.5 * 100)  # the typical crown, above the photo


def test_render_puts_the_synthetic_head_where_the_rule_says() -> None:
    rgb, matte = _synthetic_portrait()
    head = Head(crown_y=60, chin_y=260, centre_x=250)
    p = place(head, PASSPORT)
    out_rgb, out_alpha = render(rgb, alpha_from_matte(matte), p, (PASSPORT.width_px, PASSPORT.height_px))
    assert out_rgb.shape == (PASSPORT.height_px, PASSPORT.width_px, 3)
    column = out_alpha[:, PASSPORT.width_px // 2]
    assert np.flatnonzero(column > 0.5)[0] == pytest.approx(PASSPORT.top_px, abs=2)
    rows = np.flatnonzero(out_alpha.max(axis=1) > 0.5)
    assert rows[0] == pytest.approx(PASSPORT.top_px, abs=2)
    cols = np.flatnonzero(out_alpha[round(PASSPORT.top_px + PASSPORT.head_px / 2)] > 0.5)
    assert (cols[0] + cols[-1]) / 2 == pytest.approx(PASSPORT.width_px / 2, abs=2)


def test_render_shrinks_large_photos_with_area_averaging() -> None:
    rgb, matte = _synthetic_portrait()
    big_rgb, big_matte = (cv2.resize(a, None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST) for a in (rgb, matte))
    p = place(Head(480, 2080, 2000), PASSPORT)
    assert p.scale < 1
    out_rgb, out_alpha = render(big_rgb, alpha_from_matte(big_matte), p, (PASSPORT.width_px, PASSPORT.height_px))
    assert out_alpha.max() == pytest.approx(1.0) and np.isfinite(out_rgb).all()


def test_outside_the_photo_is_background() -> None:
    rgb, matte = _synthetic_portrait()
    p = place(Head(crown_y=60, chin_y=200, centre_x=20), PASSPORT)  # the face at the photo's left edge
    out_rgb, out_alpha = render(rgb, alpha_from_matte(matte), p, (PASSPORT.width_px, PASSPORT.height_px))
    photo = composite(out_rgb, out_alpha, (67, 142, 219))
    assert tuple(photo[0, 0]) == tuple(photo[0, -1]) == tuple(photo[-1, 0]) == (67, 142, 219)


def test_the_matte_haze_is_cut_to_exact_background() -> None:
    alpha = alpha_from_matte(np.array([[0, 10, 24, 128, 232, 255]], np.uint8))
    assert alpha[0, 0] == alpha[0, 1] == alpha[0, 2] == 0.0
    assert alpha[0, 4] == alpha[0, 5] == 1.0 and 0.4 < alpha[0, 3] < 0.6


# --- face choice ------------------------------------------------------------------------------


def _all_subject(shape: tuple[int, int] = (600, 1000)) -> np.ndarray:
    return np.ones(shape, np.float32)


def test_no_face_is_no_face() -> None:
    with pytest.raises(NoFace):
        choose_face([], _all_subject(), "single")


def test_two_faces_are_multiple_faces_unless_largest_is_asked() -> None:
    faces = [_face(100, 100, 80), _face(500, 100, 120)]
    with pytest.raises(MultipleFaces, match="face=largest"):
        choose_face(faces, _all_subject(), "single")
    assert choose_face(faces, _all_subject(), "largest") == faces[1]


def test_a_face_off_the_subject_does_not_count() -> None:
    alpha = np.zeros((600, 1000), np.float32)
    alpha[:, :400] = 1.0  # the person is on the left; the right-hand face is a poster behind
    faces = [_face(100, 100, 80), _face(500, 100, 120)]
    assert choose_face(faces, alpha, "single") == faces[0]


def test_mirrored_detections_of_one_face_merge() -> None:
    rows = np.array([[100, 100, 50, 50, 20, 1], [104, 98, 52, 52, 30, 1], [300, 100, 50, 50, 12, 1]], np.float32)
    merged = merge_overlapping(rows)
    assert len(merged) == 2 and merged[0][4] == 30


# --- print sheet ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "copies", "sheet"),
    [
        ("1-inch", 12, (1200, 1800)),
        ("small-2-inch", 9, (1200, 1800)),
        ("2-inch", 8, (1800, 1200)),
        ("passport", 8, (1800, 1200)),
        ("us-passport", 2, (1200, 1800)),
    ],
)
def test_sheet_layout_fits_the_most_copies(size: str, copies: int, sheet: tuple[int, int]) -> None:
    frame = frame_for(size, 300)
    layout = sheet_layout(frame.width_px, frame.height_px)
    assert (layout.copies, (layout.width, layout.height)) == (copies, sheet)


def test_the_sheet_holds_the_copies_with_guides_between() -> None:
    frame = frame_for("1-inch", 300)
    photo = np.full((frame.height_px, frame.width_px, 3), (67, 142, 219), np.uint8)
    sheet = make_sheet(photo, 300)
    assert sheet.shape == (1800, 1200, 3)
    assert count_copies(sheet, (67, 142, 219), frame.width_px) == 12
    assert (sheet == (170, 170, 170)).all(axis=2).any()  # cut guides drawn
    assert (sheet != (67, 142, 219)).any(axis=2).sum() > 0


def test_a_600_dpi_photo_keeps_its_printed_size_on_the_sheet() -> None:
    frame = frame_for("passport", 600)
    sheet = make_sheet(np.full((frame.height_px, frame.width_px, 3), 200, np.uint8), 600)
    assert sheet.shape == (1200, 1800, 3) and count_copies(sheet, (200, 200, 200), 413) == 8


def test_a_photo_larger_than_the_sheet_is_refused() -> None:
    with pytest.raises(InvalidParams, match="does not fit"):
        make_sheet(np.zeros((2000, 1500, 3), np.uint8), 300)


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_the_dpi_is_in_the_file(fmt: str) -> None:
    data = encode_within(samples.astronaut(), OutputSpec(fmt), 350, None)
    img = Image.open(io.BytesIO(data))
    assert tuple(round(v) for v in img.info["dpi"]) == (350, 350)


@pytest.mark.parametrize("max_kb", [10, 16, 24])
def test_max_kb_is_respected_at_the_highest_quality_that_fits(max_kb: int) -> None:
    photo = samples.astronaut()[:400, 50:350]
    data = encode_within(photo, OutputSpec("jpeg", 95), 300, max_kb)
    assert len(data) <= max_kb * 1024
    assert round(Image.open(io.BytesIO(data)).info["dpi"][0]) == 300
    bigger = encode_within(photo, OutputSpec("jpeg", 95), 300, max_kb + 8)
    assert len(bigger) > len(data)  # more room gives a better file, not the same one


def test_max_kb_that_no_quality_reaches_is_a_422() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    with pytest.raises(MaxKbTooSmall) as err:
        encode_within(noise, OutputSpec("jpeg"), 300, 5)
    assert err.value.status == 422 and err.value.code == "max_kb_too_small" and "max_kb=5" in err.value.message


def test_frame_shares_are_the_middle_of_the_ranges() -> None:
    f = Frame(400, 500, 300, (0.6, 0.8), (0.05, 0.15))
    assert (f.head_px, f.top_px) == pytest.approx((350, 50))


# The Haar detector's box on the astronaut (x, y, width, height, neighbours, profile).
ASTRONAUT_FACE = np.array([[171, 62, 108, 108, 40, 0]], np.float32)


# --- the matte's edges ------------------------------------------------------------------------


def test_the_matte_call_carries_the_edge_controls() -> None:
    from stylefleet.deployments.batching import ModelRequest
    from stylefleet.deployments.idphoto import IdPhotoModel

    model = IdPhotoModel()
    prepared = model.prepare(ModelRequest({"image": samples.astronaut()}, {"alpha_matting": "true", "erode_px": "1"}))
    matte = model.then(prepared, {"faces": ASTRONAUT_FACE})["matte"].params
    assert (matte["alpha_matting"], matte["erode_px"], matte["threshold"], matte["feather_px"]) == (True, 1, None, 0.0)


def test_the_default_matte_call_asks_for_no_edge_work() -> None:
    from stylefleet.deployments.background import EdgeParams, RemoveBackgroundParams
    from stylefleet.deployments.batching import ModelRequest
    from stylefleet.deployments.idphoto import IdPhotoModel

    model = IdPhotoModel()
    matte = model.then(model.prepare(ModelRequest({"image": samples.astronaut()}, {})), {"faces": ASTRONAUT_FACE})["matte"].params
    checked = RemoveBackgroundParams.model_validate(matte)
    assert checked.edges() == EdgeParams().edges()
