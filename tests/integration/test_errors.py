"""Every error code over real HTTP: typed JSON, right status, no traceback, nothing else harmed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests import samples

pytestmark = pytest.mark.integration


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    return body["error"]["message"]


@pytest.mark.parametrize(
    "payload",
    [b"", samples.NOT_AN_IMAGE, samples.truncated_jpeg(samples.astronaut())],
    ids=["zero-bytes", "not-an-image", "truncated"],
)
def test_invalid_image_is_400(client: httpx.Client, payload: bytes) -> None:
    r = client.post("/v1/styles/frost", files={"image": ("x.jpg", payload, "image/jpeg")})
    _error(r, 400, "invalid_image")


def test_unknown_style_is_404(client: httpx.Client) -> None:
    r = client.post("/v1/styles/no-such-style", files={"image": ("x.png", samples.encoded(samples.cat()), "image/png")})
    assert "no-such-style" in _error(r, 404, "unknown_style")


def test_body_over_max_upload_bytes_is_413(client: httpx.Client) -> None:
    big = b"\0" * (5 * 1024 * 1024)  # the test config allows 4 MiB
    r = client.post("/v1/styles/frost", files={"image": ("big.png", big, "image/png")})
    assert "max_upload_bytes" in _error(r, 413, "payload_too_large")


def test_decompression_bomb_is_413_before_decoding(client: httpx.Client) -> None:
    r = client.post("/v1/styles/frost", files={"image": ("bomb.png", samples.png_bomb(), "image/png")})
    assert "max_pixels" in _error(r, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"files": {"image": ("doc.pdf", samples.PDF_FILE, "application/pdf")}},
        {"json": {"image": "not a file"}},
    ],
    ids=["pdf-upload", "json-body"],
)
def test_unsupported_media_type_is_415(client: httpx.Client, kwargs: dict) -> None:
    _error(client.post("/v1/styles/frost", **kwargs), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"strength": "2"}, "strength"),
        ({"strength": "strong"}, "strength"),
        ({"format": "gif"}, "format"),
        ({"quality": "0"}, "quality"),
        ({"colour": "red"}, "colour"),
        ({"style": "3"}, "fixed"),
    ],
    ids=["out-of-range", "not-a-number", "bad-format", "bad-quality", "unknown-field", "fixed-param"],
)
def test_invalid_params_are_422_naming_the_field(client: httpx.Client, fields: dict[str, str], needle: str) -> None:
    r = client.post("/v1/styles/frost", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")}, data=fields)
    assert needle in _error(r, 422, "invalid_params")


def test_missing_image_field_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/styles/frost", files={"picture": ("c.png", samples.encoded(samples.cat()), "image/png")})
    _error(r, 422, "invalid_params")


def test_restyle_without_style_image_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/styles/restyle", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")})
    assert "style_image" in _error(r, 422, "invalid_params")


def test_full_queue_is_503_overloaded_with_retry_after(base_url: str) -> None:
    """The test config lets restyle hold one request and queue one more; a burst overflows it."""
    files = {
        "image": ("a.png", samples.encoded(samples.astronaut()), "image/png"),
        "style_image": ("c.png", samples.encoded(samples.cat()), "image/png"),
    }

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/styles/restyle", files=files) for _ in range(12)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    shed = next(r for r in responses if r.status_code == 503)
    _error(shed, 503, "overloaded")
    assert int(shed.headers["retry-after"]) >= 1


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    _error(client.get("/v1/nothing-here"), 404, "not_found")
