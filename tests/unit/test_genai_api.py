"""The HTTP API of the generative styles with a fake backend: JSON/form prompts, seeds, n images. No Ray."""

from __future__ import annotations

import email
import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from stylefleet.config import Limits
from stylefleet.errors import ModelUnavailable
from tests import samples
from tests.unit.apps import api_client
from tests.unit.fakes import FakeBackend, flag_odd_seeds, seeded_png


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(seeded_png)


@pytest.fixture()
def api(backend: FakeBackend) -> TestClient:
    return api_client(backend, "serve_config.genai.yaml", Limits(max_upload_bytes=1_000_000, max_images_per_request=4))


def test_json_prompt_runs_the_preset_with_its_seed(api: TestClient, backend: FakeBackend) -> None:
    r = api.post("/v1/styles/product-shot", json={"prompt": "a red kettle"})
    assert r.status_code == 200 and r.content == b"PNG-1234"
    assert r.headers["x-stylefleet-seed"] == "1234" and r.headers["content-type"] == "image/png"
    [(deployment, request)] = backend.calls
    assert deployment == "diffusion" and request.images == {}
    assert request.params["prompt"] == "a red kettle" and request.params["steps"] == 25
    assert request.params["pipeline"] == "text-to-image" and request.params["guidance_scale"] == 7.0


@pytest.mark.parametrize(
    "kwargs",
    [{"data": {"prompt": "a kettle", "seed": "77", "steps": "12"}}, {"json": {"prompt": "a kettle", "seed": 77, "steps": 12}}],
    ids=["form", "json"],
)
def test_seed_and_steps_can_be_set(api: TestClient, backend: FakeBackend, kwargs) -> None:
    r = api.post("/v1/styles/product-shot", **kwargs)
    assert r.status_code == 200 and r.headers["x-stylefleet-seed"] == "77"
    assert (backend.calls[0][1].params["seed"], backend.calls[0][1].params["steps"]) == (77, 12)


def test_a_preset_with_a_default_negative_prompt_lets_clients_replace_it(api: TestClient, backend: FakeBackend) -> None:
    assert api.post("/v1/styles/concept-art", json={"negative_prompt": "fog"}).status_code == 200
    assert backend.calls[0][1].params["negative_prompt"] == "fog"
    api.post("/v1/styles/concept-art", json={})
    assert backend.calls[1][1].params["negative_prompt"] == "photo, blurry, low quality, text, watermark"


def test_an_empty_body_uses_the_preset_defaults(api: TestClient, backend: FakeBackend) -> None:
    r = api.post("/v1/styles/concept-art")
    assert r.status_code == 200 and r.headers["x-stylefleet-seed"] == "7"
    assert backend.calls[0][1].params["prompt"] == "a floating city at dusk"


def test_n_images_come_back_as_a_zip_with_consecutive_seeds(api: TestClient, backend: FakeBackend) -> None:
    r = api.post("/v1/styles/product-shot", json={"prompt": "a lamp", "seed": 10, "n": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["x-stylefleet-seed"] == "10,11,12" and r.headers["x-stylefleet-count"] == "3"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.namelist() == ["product-shot-0-seed10.png", "product-shot-1-seed11.png", "product-shot-2-seed12.png"]
    assert archive.read("product-shot-1-seed11.png") == b"PNG-11"
    assert [req.params["seed"] for _, req in backend.calls] == [10, 11, 12]


def test_n_images_as_multipart_mixed_when_asked(api: TestClient) -> None:
    r = api.post("/v1/styles/product-shot", json={"n": 2}, headers={"Accept": "multipart/mixed"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/mixed; boundary=")
    message = email.message_from_bytes(b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
    parts = message.get_payload()
    assert [p["X-Stylefleet-Seed"] for p in parts] == ["1234", "1235"]
    assert [p.get_payload(decode=True) for p in parts] == [b"PNG-1234", b"PNG-1235"]


@pytest.mark.parametrize(
    ("style", "kwargs", "status", "needle"),
    [
        ("product-shot", {"json": {"n": 5}}, 422, "max_images_per_request"),
        ("product-shot", {"json": {"n": "two"}}, 422, "n:"),
        ("product-shot", {"json": {"steps": 41}}, 422, "10..40"),
        ("product-shot", {"json": {"guidance_scale": 1}}, 422, "fixed"),
        ("product-shot", {"json": {"negative_prompt": "x"}}, 422, "fixed"),
        ("product-shot", {"json": {"prompt": ["a", "b"]}}, 422, "plain values"),
        ("product-shot", {"json": [1, 2]}, 422, "object"),
        ("product-shot", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ("product-shot", {"files": {"image": ("c.png", b"x", "image/png")}}, 422, "takes no file"),
        ("watercolor", {"json": {"prompt": "a cat"}}, 415, "multipart"),
        ("anime-portrait", {"files": {"image": ("c.png", b"x", "image/png")}, "data": {"n": "2"}}, 422, "n"),
        ("anime-portrait", {"files": {"image": ("c.png", b"x", "image/png")}, "data": {"seed": "2"}}, 422, "seed"),
    ],
    ids=["n-over-limit", "n-not-a-number", "steps-over-preset", "guidance-fixed", "negative-fixed", "list-value",
         "json-array", "broken-json", "file-to-text-style", "json-to-image-style", "n-on-unseeded", "seed-on-unseeded"],
)
def test_bad_requests_name_the_problem(api: TestClient, backend: FakeBackend, style, kwargs, status, needle) -> None:
    r = api.post(f"/v1/styles/{style}", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert backend.calls == []


def test_img2img_takes_the_image_file(api: TestClient, backend: FakeBackend) -> None:
    r = api.post("/v1/styles/watercolor", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")}, data={"prompt": "a cat"})
    assert r.status_code == 200 and r.headers["x-stylefleet-seed"] == "42"
    assert backend.calls[0][1].files["image"] == samples.encoded(samples.cat())


def test_model_unavailable_is_503(api: TestClient, backend: FakeBackend) -> None:
    backend.reply = ModelUnavailable("the diffusion deployment has no running replica")
    r = api.post("/v1/styles/product-shot", json={})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"


def test_styles_list_the_preset_params_with_its_defaults_and_bounds(api: TestClient) -> None:
    styles = {s["name"]: s for s in api.get("/v1/styles").json()["styles"]}
    shot = styles["product-shot"]
    assert shot["task"] == "text-to-image" and shot["inputs"] == []
    params = {p["name"]: p for p in shot["params"]}
    assert set(params) == {"prompt", "seed", "steps", "n", "format", "quality"}
    assert (params["steps"]["default"], params["steps"]["minimum"], params["steps"]["maximum"]) == (25, 10, 40)
    assert params["seed"]["default"] == 1234 and params["n"]["maximum"] == 4
    assert styles["watercolor"]["inputs"] == ["image"]
    assert {p["name"] for p in styles["anime-portrait"]["params"]} == {"face_crop", "max_side", "format", "quality"}


def test_a_flagged_image_says_so_in_a_header() -> None:
    api = api_client(FakeBackend(flag_odd_seeds), "serve_config.genai.yaml", Limits(max_upload_bytes=1_000_000, max_images_per_request=4))
    assert api.post("/v1/styles/product-shot", json={"prompt": "a lamp", "seed": 3}).headers["x-stylefleet-nsfw"] == "true"
    assert api.post("/v1/styles/product-shot", json={"prompt": "a lamp", "seed": 4}).headers["x-stylefleet-nsfw"] == "false"
    assert api.post("/v1/styles/product-shot", json={"prompt": "a lamp", "seed": 4, "n": 2}).headers["x-stylefleet-nsfw"] == "false,true"


def test_no_safety_checker_no_header(api: TestClient) -> None:
    assert "x-stylefleet-nsfw" not in api.post("/v1/styles/product-shot", json={"prompt": "a lamp"}).headers
