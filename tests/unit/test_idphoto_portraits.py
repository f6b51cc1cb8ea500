"""id-photo on real press portraits (face_recognition's test images, fetched by `make portraits`).

Each output is measured again with the landmarks on its own pixels: chin from the jaw point,
crown from the first non-backdrop row. No Ray: the roles run in process.
"""

from __future__ import annotations

import asyncio
import io
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, Reply, run_batch
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.facegeometry import CHIN, mesh_faces
from stylefleet.deployments.idphoto import IdPhotoModel
from stylefleet.deployments.landmarks import FaceMeshModel
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.presets import PRESETS
from stylefleet.deployments.registry import resolve
from stylefleet.errors import StylefleetError
from tests.idphoto_checks import crown_row

FOLDER = Path(__file__).resolve().parents[2] / ".portraits"
BLUE = (67, 142, 219)
# What each portrait is (looked at by eye) and what the service must say about it with checks=warn.
EXPECTED = {
    "biden.jpg": ("ok", {"pose_not_frontal", "head_tilted"}),  # turned and tilted towards the camera
    "obama.jpg": ("ok", {"mouth_open"}),  # a broad smile, teeth apart
    "obama2.jpg": ("ok", {"pose_not_frontal", "mouth_open"}),  # talking, turned
    "obama3.jpg": ("ok", {"pose_not_frontal"}),  # seen from below, chin up
    "obama_partial_face.jpg": ("face_cut_off", set()),  # the frame cuts his face
    "obama_partial_face2.jpg": ("face_cut_off", set()),
}

pytestmark = pytest.mark.skipif(not (FOLDER / "biden.jpg").is_file(), reason="run `make portraits` to fetch the real portraits")


@cache
def _models() -> dict[str, object]:
    runtime = RuntimeOptions(threads=1)
    return {
        "matte": U2NetModel(resolve("u2netp"), runtime),
        "faces": FaceMeshModel(resolve("blazeface_full_range"), resolve("face_mesh"), runtime),
    }


async def _call(role: str, request: ModelRequest) -> Reply:
    return run_batch(_models()[role], [request])[0]  # type: ignore[arg-type]


def _photo(name: str, **params: object) -> Reply:
    pixels = np.asarray(Image.open(FOLDER / name).convert("RGB"))
    request = ModelRequest({"image": pixels}, {"size": "passport", "bg_color": "blue", **params}, OutputSpec("png"))
    return asyncio.run(run_composed(IdPhotoModel(), [request], _call, StageClock(), "sha"))[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_portrait_gives_an_in_band_photo_or_names_its_problem(name: str) -> None:
    outcome, findings = EXPECTED[name]
    reply = _photo(name)
    if outcome != "ok":
        assert isinstance(reply, StylefleetError) and reply.code == outcome, reply
        return
    assert isinstance(reply, EncodedImage), reply
    assert set((reply.checks or "").split(",")) == findings
    rgb = np.asarray(Image.open(io.BytesIO(reply.data)).convert("RGB"))
    [rows] = run_batch(_models()["faces"], [ModelRequest({"image": rgb})])  # type: ignore[arg-type]
    faces = mesh_faces(rows)  # type: ignore[arg-type]
    assert len(faces) == 1
    h = rgb.shape[0]
    crown, chin = crown_row(rgb, BLUE), float(faces[0].points[CHIN, 1])
    (head_lo, head_hi), (top_lo, top_hi) = PRESETS["passport"].head_share, PRESETS["passport"].top_share
    assert head_lo - 0.01 <= (chin - crown) / h <= head_hi + 0.01
    assert top_lo - 0.01 <= crown / h <= top_hi + 0.01
    assert abs(faces[0].roll_deg()) < 3.0  # levelled


def test_strict_refuses_with_the_first_finding_and_off_reports_nothing() -> None:
    strict = _photo("obama.jpg", checks="strict")
    assert isinstance(strict, StylefleetError) and strict.code == "mouth_open" and strict.status == 422
    off = _photo("obama.jpg", checks="off")
    assert isinstance(off, EncodedImage) and off.checks is None
