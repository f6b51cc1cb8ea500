"""The id-photo pipeline end to end in-process: the real U2Net and Haar models, no Ray.

The deployments behind the roles are stood in for by the same models run in this process
(``InProcess``), through the same ``run_composed`` the Serve replica uses.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

import numpy as np
import pytest

from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, Reply, run_batch
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.faces import HaarFaceModel
from stylefleet.deployments.idphoto import (
    IdPhotoModel,
    choose_face,
    composite,
    estimate_head,
    foreground,
    frame_region,
    keep_subject,
    place,
    region_alpha,
    render,
)
from stylefleet.deployments.presets import PRESETS, frame_for
from stylefleet.errors import FaceTooSmall, InvalidImage, InvalidParams, ModelUnavailable, MultipleFaces, NoFace, StylefleetError
from stylefleet.imageio import decode
from tests import samples
from tests.idphoto_checks import count_copies, crown_row, measure, read

BLUE = (67, 142, 219)


class InProcess:
    """Plays the roles with in-process models; remembers answers per image (the tests reuse photos)."""

    def __init__(self, models: dict[str, Any]) -> None:
        self.models = models
        self.calls: Counter[str] = Counter()
        self.fail_marked = False  # matte calls on photos carrying MARK fail
        self._memo: dict[tuple[str, str], Reply] = {}

    async def __call__(self, role: str, request: ModelRequest) -> Reply:
        self.calls[role] += 1
        digest = _digest(request.images["image"])
        if role == "matte" and self.fail_marked and _marked(request.images["image"]):
            raise ModelUnavailable("the remove-background deployment could not serve the request")
        key = (role, digest + repr(sorted(request.params.items())))
        if key not in self._memo:
            self._memo[key] = run_batch(self.models[role], [request])[0]
        return self._memo[key]


MARK = (1, 2, 3)  # a 3x3 patch of this colour on the face marks a photo whose matte call fails


def _mark(pixels: np.ndarray, x: int, y: int) -> np.ndarray:
    marked = pixels.copy()
    marked[y:y + 3, x:x + 3] = MARK
    return marked


def _marked(pixels: np.ndarray) -> bool:
    return int(np.all(pixels[:, :, :3] == MARK, axis=2).sum()) >= 9


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha1(pixels.tobytes() + repr(pixels.shape).encode()).hexdigest()


@pytest.fixture(scope="module")
def roles(runtime) -> InProcess:
    from stylefleet.deployments.registry import resolve

    return InProcess(
        {
            "matte": U2NetModel(resolve("u2netp"), runtime),
            "faces": HaarFaceModel(resolve("haarcascade_frontalface_default"), resolve("haarcascade_profileface"), runtime),
        }
    )


def _run(roles: InProcess, requests: list[ModelRequest], clock: StageClock | None = None) -> list[Reply]:
    return asyncio.run(run_composed(IdPhotoModel(), requests, roles, clock or StageClock(), "sha"))


def _photo(roles: InProcess, pixels: np.ndarray, output: OutputSpec | None = OutputSpec("png"), **params: Any) -> Reply:
    return _run(roles, [ModelRequest({"image": pixels}, params, output)])[0]


def _ok(reply: Reply) -> EncodedImage:
    assert isinstance(reply, EncodedImage), reply
    return reply


PORTRAITS = {p.name: p for p in samples.portraits()}


@pytest.mark.parametrize("size", list(PRESETS))
@pytest.mark.parametrize("name", list(PORTRAITS))
def test_each_portrait_and_preset_gives_the_exact_size_dpi_and_placement(roles: InProcess, name: str, size: str) -> None:
    reply = _ok(_photo(roles, PORTRAITS[name].pixels, size=size, bg_color="blue"))
    rgb, dpi, fmt = read(reply.data)
    frame = frame_for(size, 300)
    assert (rgb.shape[1], rgb.shape[0], dpi, fmt) == (frame.width_px, frame.height_px, (300, 300), "PNG")
    assert tuple(rgb[0, 0]) == tuple(rgb[0, -1]) == BLUE  # the top corners are backdrop
    lo, hi = PRESETS[size].top_share
    assert lo - 0.01 <= crown_row(rgb, BLUE) / frame.height_px <= hi + 0.01
    if not PORTRAITS[name].profile:
        m = measure(rgb, BLUE)
        assert m.face_centre_share <= 0.05
        lo, hi = PRESETS[size].head_share
        assert lo <= m.head_share <= hi


@pytest.mark.parametrize("size", list(PRESETS))
@pytest.mark.parametrize("name", list(PORTRAITS))
def test_the_marked_head_lands_inside_the_presets_rules(roles: InProcess, name: str, size: str) -> None:
    """Against the head marked by eye, not the estimator: where do the real crown and chin land?"""
    portrait = PORTRAITS[name]
    pixels = portrait.pixels
    from stylefleet.deployments.faces import faces_from_array

    frame = frame_for(size, 300)
    faces = faces_from_array(asyncio.run(roles("faces", ModelRequest({"image": pixels}, {}))))  # type: ignore[arg-type]
    region = frame_region(faces, frame, pixels.shape[:2])
    matte = asyncio.run(roles("matte", ModelRequest({"image": region.crop(pixels)}, {"only_mask": True, "max_side": 2048})))
    alpha = region_alpha(matte, region, pixels.shape[:2])  # type: ignore[arg-type]
    face = choose_face(faces, alpha, "single")
    assert face.profile == portrait.profile
    p = place(estimate_head(face, keep_subject(alpha, face)), frame)
    head_share = p.scale * (portrait.chin_y - portrait.crown_y) / frame.height_px
    top_share = (p.scale * portrait.crown_y + p.dy) / frame.height_px
    lo, hi = PRESETS[size].head_share
    assert lo - 0.02 <= head_share <= hi + 0.02  # the marks themselves are +-2 px
    lo, hi = PRESETS[size].top_share
    assert lo - 0.02 <= top_share <= hi + 0.02
    if portrait.centre_x is not None:
        centre = p.scale * portrait.centre_x + p.dx
        assert abs(centre - frame.width_px / 2) <= 0.05 * frame.width_px


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_portrait_comes_out_upright(roles: InProcess, orientation: int) -> None:
    rotate = {3: 2, 6: 1, 8: 3}[orientation]  # the stored pixels are turned; EXIF says how to undo it
    stored = np.ascontiguousarray(np.rot90(samples.astronaut(), rotate))
    upright = decode(samples.jpeg_with_orientation(stored, orientation), max_pixels=10**8).pixels
    rgb, _, _ = read(_ok(_photo(roles, upright, size="passport")).data)
    m = measure(rgb, (255, 255, 255))
    assert m.face_centre_share <= 0.05 and 0.71 <= m.head_share <= 0.80


def test_coffee_has_no_face(roles: InProcess) -> None:
    reply = _photo(roles, samples.coffee())
    assert isinstance(reply, NoFace) and reply.status == 422 and reply.code == "no_face"


def test_two_portraits_side_by_side_are_multiple_faces(roles: InProcess) -> None:
    reply = _photo(roles, samples.side_by_side())
    assert isinstance(reply, MultipleFaces) and reply.code == "multiple_faces"


def test_face_largest_picks_one_of_two(roles: InProcess) -> None:
    rgb, _, _ = read(_ok(_photo(roles, samples.side_by_side(), face="largest")).data)
    assert rgb.shape == (531, 413, 3) and measure(rgb, (255, 255, 255)).face_centre_share <= 0.05


def test_a_small_face_for_a_big_print_is_face_too_small(roles: InProcess) -> None:
    small = samples.scaled(samples.astronaut(), 0.4)
    reply = _photo(roles, small, dpi=600)
    assert isinstance(reply, FaceTooSmall) and reply.code == "face_too_small"
    assert isinstance(_photo(roles, small, size="1-inch", dpi=150), EncodedImage)  # the same face, a smaller print


def test_max_kb_jpeg_fits(roles: InProcess) -> None:
    reply = _ok(_photo(roles, samples.astronaut(), OutputSpec("jpeg", 95), size="2-inch", max_kb=20))
    assert len(reply.data) <= 20 * 1024 and reply.content_type == "image/jpeg"
    assert read(reply.data)[1:] == ((300, 300), "JPEG")


def test_max_kb_needs_jpeg(roles: InProcess) -> None:
    reply = _photo(roles, samples.astronaut(), OutputSpec("png"), max_kb=20)
    assert isinstance(reply, InvalidParams) and "format=jpeg" in reply.message


def test_bad_requests_are_refused_before_the_other_deployments_are_asked(roles: InProcess) -> None:
    before = roles.calls.copy()
    replies = _run(
        roles,
        [
            ModelRequest({"image": samples.astronaut()}, {"max_kb": 20}, OutputSpec("png")),
            ModelRequest({"image": samples.astronaut()}, {}, OutputSpec("webp")),
            ModelRequest({"image": np.zeros((8, 8, 3), np.uint8)}, {}, OutputSpec("png")),
        ],
    )
    assert [type(r) for r in replies] == [InvalidParams, InvalidParams, InvalidImage]
    assert roles.calls == before


def test_a_print_sheet_of_copies(roles: InProcess) -> None:
    reply = _ok(_photo(roles, samples.astronaut(), size="1-inch", layout="4r", bg_color="blue"))
    rgb, dpi, _ = read(reply.data)
    assert rgb.shape == (1800, 1200, 3) and dpi == (300, 300)
    assert count_copies(rgb, BLUE, 295) == 12


def test_output_none_returns_the_array(roles: InProcess) -> None:
    out = _photo(roles, samples.astronaut(), None, size="us-passport")
    assert isinstance(out, np.ndarray) and out.shape == (600, 600, 3)


def test_one_bad_photo_in_a_batch_harms_no_other(roles: InProcess) -> None:
    good = ModelRequest({"image": samples.astronaut()}, {"size": "1-inch"}, OutputSpec("png"))
    alone = _ok(_run(roles, [good])[0])
    failing = _mark(np.ascontiguousarray(samples.astronaut()[:, ::-1]), 280, 110)  # its matte call will fail
    roles.fail_marked = True
    batch = [
        good,
        ModelRequest({"image": samples.coffee()}, {"size": "1-inch"}, OutputSpec("png")),
        ModelRequest({"image": np.zeros((8, 8, 3), np.uint8)}, {}, OutputSpec("png")),
        ModelRequest({"image": samples.astronaut()}, {"size": "nope"}, OutputSpec("png")),
        ModelRequest({"image": failing}, {}, OutputSpec("png")),
        good,
    ]
    clock = StageClock()
    replies = _run(roles, batch, clock)
    expected = ["EncodedImage", "NoFace", "InvalidImage", "InvalidParams", "ModelUnavailable", "EncodedImage"]
    assert [type(r).__name__ for r in replies] == expected
    assert _ok(replies[0]).data == alone.data == _ok(replies[5]).data
    assert all(isinstance(r, StylefleetError) for r in replies[1:5])
    assert set(clock.seconds) == {"prepare", "wait", "compose", "encode"}
    assert clock.requests["encode"] == 2


def _region_matte(roles: InProcess, pixels: np.ndarray, size: str) -> tuple[Any, np.ndarray]:
    from stylefleet.deployments.faces import faces_from_array

    faces = faces_from_array(asyncio.run(roles("faces", ModelRequest({"image": pixels}, {}))))  # type: ignore[arg-type]
    region = frame_region(faces, frame_for(size, 300), pixels.shape[:2])
    matte = asyncio.run(roles("matte", ModelRequest({"image": region.crop(pixels)}, {"only_mask": True, "max_side": 2048})))
    alpha = region_alpha(matte, region, pixels.shape[:2])  # type: ignore[arg-type]
    return choose_face(faces, alpha, "single"), alpha


def _off_line(photo: np.ndarray, alpha: np.ndarray, bg: tuple[int, int, int]) -> float:
    """Mean distance of the soft edge's colours from the line between the nearest solid subject
    colour and the background: 0 when every edge pixel is a mix of the two, more where the old
    backdrop shows through."""
    from scipy import ndimage

    band = (alpha > 0.05) & (alpha < 0.95)
    _, (iy, ix) = ndimage.distance_transform_edt(alpha < 0.98, return_indices=True)
    person, colour, b = photo[iy, ix].astype(float)[band], photo.astype(float)[band], np.asarray(bg, float)
    d = person - b
    t = np.clip(((colour - b) * d).sum(1) / np.maximum((d * d).sum(1), 1e-6), 0, 1)
    return float(np.linalg.norm(colour - (b + t[:, None] * d), axis=1).mean())


def test_the_old_backdrop_leaves_the_astronauts_hair(roles: InProcess) -> None:
    """On blue, the hair edge over the astronaut's grey-blue backdrop: measured 30 without foreground
    estimation, 7 with it."""
    face, alpha = _region_matte(roles, samples.astronaut(), "passport")
    frame = frame_for("passport", 300)
    placement = place(estimate_head(face, keep_subject(alpha, face)), frame)
    rgb, a = render(samples.astronaut(), alpha, placement, (frame.width_px, frame.height_px))
    plain = _off_line(composite(rgb, a, BLUE), a, BLUE)
    cleaned = _off_line(composite(foreground(rgb, a), a, BLUE), a, BLUE)
    assert plain > 20 and cleaned < 12


def test_an_island_beside_a_real_person_is_dropped_and_the_person_kept(roles: InProcess) -> None:
    face, alpha = _region_matte(roles, samples.astronaut(), "passport")
    assert alpha[60:100, 400:440].max() == 0  # the backdrop beside her head
    with_island = alpha.copy()
    with_island[60:100, 400:440] = 1.0
    kept = keep_subject(with_island, face)
    assert not kept[60:100, 400:440].any()
    assert (kept == keep_subject(alpha, face)).all()
    assert kept.sum() >= 0.99 * alpha.sum()  # she, soft hair and all, is kept
