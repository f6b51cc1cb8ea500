"""The generative styles through the real service: tiny Stable Diffusion and AnimeGANv2 on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import io
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import samples
from tests.integration.conftest import GENAI_APP, genai_application

pytestmark = pytest.mark.integration


@pytest.fixture()
def genai(genai_app: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=genai_app["url"], timeout=120) as c:
        yield c


def _image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _info(deployment: str, app: str = GENAI_APP) -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(deployment, app).info.remote().result()


def _set_batching(serve_app: dict[str, Any], deployment: str, user_config: dict[str, Any]) -> None:
    config = copy.deepcopy(serve_app["config"])
    app = next(a for a in config["applications"] if a["name"] == GENAI_APP)
    for entry in app["deployments"]:
        if entry["name"] == deployment:
            entry["user_config"] = user_config
    serve_app["cluster"].deploy(config, timeout_s=120)


@pytest.fixture()
def long_batch_wait(serve_app: dict[str, Any], genai_app: dict[str, Any]) -> Iterator[None]:
    """Concurrent requests coalesce: the diffusion deployment waits up to 2 s for a batch to fill."""
    _set_batching(serve_app, "diffusion", {"max_batch_size": 8, "batch_wait_timeout_s": 2.0})
    try:
        yield
    finally:
        _set_batching(serve_app, "diffusion", {"max_batch_size": 8, "batch_wait_timeout_s": 0.02})


def _burst(url: str, posts: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*(c.post(f"/v1/styles/{style}", **kwargs) for style, kwargs in posts))

    return asyncio.run(run())


def _photo(pixels: np.ndarray) -> dict[str, Any]:
    return {"files": {"image": ("p.png", samples.encoded(pixels), "image/png")}}


@pytest.mark.parametrize(
    ("style", "kwargs", "shape", "seed"),
    [
        ("tiny-t2i", {"json": {"prompt": "a teapot"}}, (64, 64, 3), "1234"),
        ("tiny-t2i-wide", {"data": {"prompt": "a teapot", "seed": "8"}}, (64, 96, 3), "8"),
        ("tiny-img2img", _photo(samples.cat()), (40, 64, 3), "42"),
        ("tiny-controlnet", _photo(samples.astronaut()), (64, 64, 3), "99"),
    ],
    ids=["text-to-image-json", "text-to-image-form", "img2img", "controlnet-canny"],
)
def test_each_pipeline_kind_returns_an_image_of_the_right_size(genai: httpx.Client, style, kwargs, shape, seed) -> None:
    r = genai.post(f"/v1/styles/{style}", **kwargs)
    out = _image(r)
    assert out.shape == shape and out.std() > 1
    assert r.headers["x-stylefleet-seed"] == seed
    assert r.headers["x-stylefleet-size"] == f"{shape[1]}x{shape[0]}"
    assert len(r.headers["x-stylefleet-model-sha256"]) == 64


def test_anime_keeps_the_size_of_any_photo(genai: httpx.Client) -> None:
    r = genai.post("/v1/styles/tiny-anime", files={"image": ("c.jpg", samples.encoded(samples.cat(), "JPEG"), "image/jpeg")})
    assert _image(r).shape == samples.cat().shape


def test_same_seed_same_image_alone_and_in_a_batch_of_4(genai_app: dict[str, Any], genai: httpx.Client, long_batch_wait: None) -> None:
    alone = _image(genai.post("/v1/styles/tiny-t2i", json={"prompt": "a teapot", "seed": 77}))
    before = _info("diffusion")["batch_sizes"].get(4, 0)
    mates = [{"prompt": "a cat", "seed": 1}, {"prompt": "a teapot", "seed": 77}, {"prompt": "fog", "seed": 2}, {"prompt": "x", "seed": 3}]
    together = _burst(genai_app["url"], [("tiny-t2i", {"json": m}) for m in mates])
    assert _info("diffusion")["batch_sizes"].get(4, 0) == before + 1  # one batch of 4
    assert _info("diffusion")["pipeline_calls"][-1]["batch"] == 4  # ...and one pipeline call
    assert samples.same_up_to_batch_rounding(alone, _image(together[1]))


def test_different_seeds_give_different_images(genai: httpx.Client) -> None:
    a = _image(genai.post("/v1/styles/tiny-t2i", json={"seed": 1}))
    b = _image(genai.post("/v1/styles/tiny-t2i", json={"seed": 2}))
    assert np.abs(a.astype(int) - b).mean() > 5


def test_incompatible_requests_are_never_in_one_pipeline_call(genai_app: dict[str, Any], long_batch_wait: None) -> None:
    seen = len(_info("diffusion")["pipeline_calls"])
    posts = [
        ("tiny-t2i", {"json": {"seed": 1}}),
        ("tiny-t2i", {"json": {"seed": 2, "steps": 3}}),
        ("tiny-t2i", {"json": {"seed": 3}}),
        ("tiny-t2i-wide", {"json": {"seed": 4}}),
        ("tiny-img2img", {**_photo(samples.cat()), "data": {"seed": "5"}}),
        ("tiny-t2i", {"json": {"seed": 6, "prompt": "a boat"}}),
        ("tiny-t2i", {"json": {"seed": 7, "steps": 3}}),
        ("tiny-img2img", {**_photo(samples.cat()), "data": {"seed": "8"}}),
    ]
    assert [r.status_code for r in _burst(genai_app["url"], posts)] == [200] * 8
    calls = _info("diffusion")["pipeline_calls"][seen:]
    # Arrival order decides the order inside a call: compare the seeds as sets.
    received = Counter((c["pipeline"], c["width"], c["height"], c["steps"], tuple(sorted(c["seeds"]))) for c in calls)
    assert received == Counter(
        {
            ("text-to-image", 64, 64, 2, (1, 3, 6)): 1,
            ("text-to-image", 64, 64, 3, (2, 7)): 1,
            ("text-to-image", 96, 64, 2, (4,)): 1,
            ("img2img", 64, 40, 2, (5, 8)): 1,
        }
    )


def test_n_images_come_back_zipped_and_each_is_its_seeds_image(genai: httpx.Client) -> None:
    r = genai.post("/v1/styles/tiny-t2i", json={"prompt": "a kite", "seed": 500, "n": 3})
    assert r.status_code == 200 and r.headers["x-stylefleet-seed"] == "500,501,502"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    second = np.asarray(Image.open(io.BytesIO(archive.read("tiny-t2i-1-seed501.png"))))
    assert samples.same_up_to_batch_rounding(second, _image(genai.post("/v1/styles/tiny-t2i", json={"prompt": "a kite", "seed": 501})))


def _wait_for(app: str, wanted: dict[str, set[str]], timeout_s: float = 300) -> dict[str, Any]:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        deployments = {} if status is None else status.deployments
        if all(name in deployments and str(deployments[name].status.value) in states for name, states in wanted.items()):
            return deployments
        time.sleep(0.5)
    raise TimeoutError(f"{app}: deployments not in {wanted} after {timeout_s}s")


def test_a_missing_model_path_is_503_while_other_styles_keep_working(
    serve_app: dict[str, Any], genai_app: dict[str, Any], client: httpx.Client, genai: httpx.Client
) -> None:
    absent = str(genai_app["models_dir"] / "absent")
    broken = genai_application(genai_app["models_dir"], name="broken", route_prefix="/broken", sd_model=absent)
    config = copy.deepcopy(serve_app["config"])
    config["applications"].append(broken)
    serve_app["cluster"].deploy(config, wait=False)
    try:
        with httpx.Client(base_url=f"{serve_app['proxy_url']}/broken", timeout=30) as broken_client:
            # While Serve still retries the constructor (about a minute: 3 tries), and after it gives
            # up, the router answers at once instead of queueing until the HTTP timeout.
            _wait_for("broken", {"router": {"HEALTHY"}, "anime": {"HEALTHY"}})
            early = broken_client.post("/v1/styles/tiny-t2i", json={"prompt": "a teapot"})
            assert early.status_code == 503 and early.json()["error"]["code"] == "model_unavailable"
            # Serve gives up: the application is DEPLOY_FAILED, its router and other deployments run on.
            [failure] = serve_app["cluster"].wait_running(["broken"], timeout_s=300, allow_degraded=True)
            assert "deployments.diffusion.diffusion.model" in failure  # the message names the setting
            r = broken_client.post("/v1/styles/tiny-t2i", json={"prompt": "a teapot"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
            assert "diffusion" in r.json()["error"]["message"]
            ok = broken_client.post("/v1/styles/tiny-anime", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")})
            assert ok.status_code == 200  # the same application's other deployment serves
        assert genai.post("/v1/styles/tiny-t2i", json={}).status_code == 200
        assert client.post("/v1/styles/frost", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")}).status_code == 200
    finally:
        serve_app["cluster"].deploy(serve_app["config"], timeout_s=120)  # the broken application goes
