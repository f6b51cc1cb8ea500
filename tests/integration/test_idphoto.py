"""The id-photo style over real HTTP: the composed deployment, its handles, its errors, its batching."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx
import numpy as np
import pytest

from stylefleet.deployments.presets import PRESETS, frame_for
from tests import samples
from tests.idphoto_checks import count_copies, crown_row, measure, read

pytestmark = pytest.mark.integration

WHITE, BLUE, RED = (255, 255, 255), (67, 142, 219), (255, 0, 0)
ASTRONAUT_PNG = samples.encoded(samples.astronaut())


def _post(client: httpx.Client, photo: bytes, **fields: Any) -> httpx.Response:
    return client.post(
        "/v1/styles/id-photo",
        files={"image": ("portrait.bin", photo, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def _error(response: httpx.Response, code: str) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.mark.parametrize("size", list(PRESETS))
def test_each_preset_gives_its_exact_size_dpi_and_placement(client: httpx.Client, size: str) -> None:
    r = _post(client, ASTRONAUT_PNG, size=size, bg_color="blue")
    assert r.status_code == 200, r.text
    rgb, dpi, fmt = read(r.content)
    frame = frame_for(size, 300)
    assert (rgb.shape[1], rgb.shape[0], dpi, fmt) == (frame.width_px, frame.height_px, (300, 300), "PNG")
    assert r.headers["x-stylefleet-size"] == f"{frame.width_px}x{frame.height_px}"
    assert tuple(rgb[0, 0]) == tuple(rgb[0, -1]) == BLUE
    m = measure(rgb, BLUE)
    assert m.face_centre_share <= 0.05
    assert PRESETS[size].head_share[0] <= m.head_share <= PRESETS[size].head_share[1]


def test_the_camera_man_in_profile(client: httpx.Client) -> None:
    r = _post(client, samples.encoded(samples.camera(), "JPEG", quality=92), size="small-2-inch")
    rgb, dpi, _ = read(r.content)
    assert r.status_code == 200 and rgb.shape == (567, 390, 3) and dpi == (300, 300)
    assert tuple(rgb[0, 0]) == tuple(rgb[0, -1]) == WHITE
    lo, hi = PRESETS["small-2-inch"].top_share
    assert lo - 0.01 <= crown_row(rgb, WHITE) / 567 <= hi + 0.01


@pytest.mark.parametrize(
    "photo",
    [
        samples.encoded(np.ascontiguousarray(samples.astronaut()[:, ::-1])),
        samples.encoded(samples.scaled(samples.astronaut(), 1.5), "JPEG", quality=90),
        samples.jpeg_with_orientation(np.ascontiguousarray(np.rot90(samples.astronaut(), 1)), 6),
        samples.jpeg_with_orientation(np.ascontiguousarray(np.rot90(samples.astronaut(), 3)), 8),
    ],
    ids=["flipped", "scaled-1.5", "exif-rotated-6", "exif-rotated-8"],
)
def test_variants_of_the_portrait(client: httpx.Client, photo: bytes) -> None:
    r = _post(client, photo, size="passport", bg_color="red")
    rgb, _, _ = read(r.content)
    assert r.status_code == 200 and rgb.shape == (531, 413, 3)
    assert tuple(rgb[0, 0]) == tuple(rgb[0, -1]) == RED
    m = measure(rgb, RED)
    assert m.face_centre_share <= 0.05 and 32 / 45 <= m.head_share <= 36 / 45


def test_custom_size_in_pixels_and_a_hex_colour_as_jpeg(client: httpx.Client) -> None:
    r = _post(client, ASTRONAUT_PNG, size="custom", width_px=358, height_px=441, dpi=350, bg_color="#ddeeff", format="jpeg")
    rgb, dpi, fmt = read(r.content)
    assert (rgb.shape, dpi, fmt, r.headers["content-type"]) == ((441, 358, 3), (350, 350), "JPEG", "image/jpeg")
    assert np.abs(rgb[0, 0].astype(int) - (0xDD, 0xEE, 0xFF)).max() <= 3  # JPEG rounding on a flat corner


@pytest.mark.parametrize("max_kb", [15, 40])
def test_max_kb_is_respected(client: httpx.Client, max_kb: int) -> None:
    r = _post(client, ASTRONAUT_PNG, size="2-inch", format="jpeg", quality=95, max_kb=max_kb)
    assert r.status_code == 200, r.text
    assert len(r.content) <= max_kb * 1024 and read(r.content)[1] == (300, 300)


def test_max_kb_that_cannot_be_reached_is_a_422(client: httpx.Client) -> None:
    assert "max_kb=1" in _error(_post(client, ASTRONAUT_PNG, size="us-passport", format="jpeg", max_kb=1), "max_kb_too_small")


def test_coffee_has_no_face(client: httpx.Client) -> None:
    _error(_post(client, samples.encoded(samples.coffee(), "JPEG", quality=90)), "no_face")


def test_two_portraits_side_by_side_are_multiple_faces(client: httpx.Client) -> None:
    photo = samples.encoded(samples.side_by_side())
    assert "face=largest" in _error(_post(client, photo), "multiple_faces")
    assert _post(client, photo, face="largest").status_code == 200


def test_a_small_face_for_a_large_print_is_face_too_small(client: httpx.Client) -> None:
    _error(_post(client, samples.encoded(samples.scaled(samples.astronaut(), 0.4)), dpi=600), "face_too_small")


def test_a_4r_sheet_with_every_copy_that_fits(client: httpx.Client) -> None:
    r = _post(client, ASTRONAUT_PNG, size="passport", layout="4r", bg_color="blue", format="jpeg")
    rgb, dpi, _ = read(r.content)
    assert r.status_code == 200 and rgb.shape == (1200, 1800, 3) and dpi == (300, 300)
    assert count_copies(rgb, BLUE, 413) == 8


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"format": "webp"}, "format"), ({"max_kb": 20}, "max_kb"), ({"size": "a4"}, "size"), ({"bg_color": "plaid"}, "bg_color")],
)
def test_bad_params_are_invalid_params(client: httpx.Client, fields: dict[str, Any], field: str) -> None:
    assert field in _error(_post(client, ASTRONAUT_PNG, **fields), "invalid_params")


def _info(deployment: str) -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(deployment, "stylefleet").info.remote().result()


def _set_batching(serve_app: dict[str, Any], user_configs: dict[str, dict[str, Any]]) -> None:
    config = copy.deepcopy(serve_app["config"])
    for entry in config["applications"][0]["deployments"]:
        if entry["name"] in user_configs:
            entry["user_config"] = user_configs[entry["name"]]
    serve_app["cluster"].deploy(config, timeout_s=120)


def test_a_batch_of_8_reaches_the_detector_as_one_batch_and_a_bad_photo_harms_no_other(serve_app: dict[str, Any]) -> None:
    photos = [ASTRONAUT_PNG] * 8
    photos[2] = samples.encoded(samples.coffee())
    photos[5] = samples.encoded(np.zeros((8, 8, 3), np.uint8))
    slow = {"max_batch_size": 8, "batch_wait_timeout_s": 2.0}  # long enough for all 8 to coalesce
    _set_batching(serve_app, {"id-photo": slow, "face-detect": slow})
    try:
        before = _info("face-detect")["batch_sizes"].get(7, 0), _info("id-photo")["batch_sizes"].get(8, 0)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=serve_app["url"], timeout=300) as c:
                return await asyncio.gather(
                    *(c.post("/v1/styles/id-photo", files={"image": ("p.png", p, "image/png")}, data={"size": "1-inch"}) for p in photos)
                )

        responses = asyncio.run(burst())
        after = _info("face-detect")["batch_sizes"].get(7, 0), _info("id-photo")["batch_sizes"].get(8, 0)
    finally:
        fast = {"max_batch_size": 8, "batch_wait_timeout_s": 0.0}
        _set_batching(serve_app, {"id-photo": fast, "face-detect": fast})
    assert [r.status_code for r in responses] == [200, 200, 422, 200, 200, 400, 200, 200]
    assert responses[2].json()["error"]["code"] == "no_face"
    assert len({r.content for i, r in enumerate(responses) if i not in (2, 5)}) == 1  # identical bytes in the batch
    # one batch of 8 in the composer; the 7 photos that passed prepare reached the detector together
    assert after == (before[0] + 1, before[1] + 1)


def test_the_composer_reports_its_uses_and_stage_times(client: httpx.Client) -> None:
    assert _post(client, ASTRONAUT_PNG).status_code == 200
    info = _info("id-photo")
    assert info["uses"] == {"matte": "remove-background", "faces": "face-detect"}
    assert {"prepare", "wait", "compose", "encode"} <= set(info["stages"])
    assert info["model_sha256"].startswith("309c8469")  # u2netp first, then the face networks


def test_the_checks_ride_in_a_header_and_strict_refuses_with_the_finding(client: httpx.Client) -> None:
    ok = _post(client, ASTRONAUT_PNG)  # 44 px between her eyes: under the 90 a passport photo wants
    assert ok.status_code == 200 and ok.headers["x-stylefleet-checks"] == "face_too_small"
    refused = _post(client, ASTRONAUT_PNG, checks="strict")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "face_too_small"
    assert "x-stylefleet-checks" not in _post(client, ASTRONAUT_PNG, checks="off").headers
