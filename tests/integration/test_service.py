"""The real service on 127.0.0.1: every style, concurrency, batch invariance, errors, reconfigure."""

from __future__ import annotations

import asyncio
import io
import os
import time
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from stylefleet.config import RAY_ENVIRONMENT
from tests import samples
from tests.integration.conftest import APP, deployment_info, redeploy
from tests.samples import ROOT

pytestmark = pytest.mark.integration

STYLES = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]["styles"]
PAINTING_STYLES = [name for name, s in STYLES.items() if s.get("deployment") == "stylize"]


def _png(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _post(client: httpx.Client, style: str, files: dict[str, bytes], **fields: Any) -> httpx.Response:
    return client.post(
        f"/v1/styles/{style}",
        files={k: (f"{k}.bin", v, "application/octet-stream") for k, v in files.items()},
        data={k: str(v) for k, v in fields.items()},
    )


def test_styles_are_listed_with_params(client: httpx.Client) -> None:
    body = client.get("/v1/styles").json()
    by_name = {s["name"]: s for s in body["styles"]}
    assert len(PAINTING_STYLES) == 26 and set(PAINTING_STYLES) <= set(by_name)
    assert {"restyle", "remove-background"} <= set(by_name)
    strength = next(p for p in by_name["starry-swirls"]["params"] if p["name"] == "strength")
    assert strength == {**strength, "type": "number", "default": 1.0, "minimum": 0.0, "maximum": 1.0}
    assert "style" not in {p["name"] for p in by_name["starry-swirls"]["params"]}  # fixed params are hidden
    assert by_name["restyle"]["inputs"] == ["image", "style_image"]


@pytest.mark.parametrize("path", ["/healthz/ready", "/healthz"])
def test_ready_reports_every_deployment(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    deployments = r.json()["deployments"]
    assert set(deployments) >= {"stylize", "restyle", "remove-background", "face-detect", "id-photo", "router"}
    assert all(d["ready"] and d["running_replicas"] >= 1 for d in deployments.values())


def test_the_cheap_status_read_names_every_deployment_as_the_whole_status_does(client: httpx.Client) -> None:
    """The router asks the controller for each deployment's status alone each second and for the
    whole status (64 ms of CPU) only when one changes: that call is Serve's controller client,
    not a public API, so it is checked against the installed Ray here."""
    from ray import serve

    from stylefleet.router.app import serve_statuses

    for _ in range(10):  # two reads: a deployment may change status between them (an earlier test's scaling)
        cheap = serve_statuses(APP)
        whole = {name: str(d.status.value) for name, d in serve.status().applications[APP].deployments.items()}
        if cheap == whole:
            break
        time.sleep(0.5)
    assert cheap is not None and set(cheap) >= {"stylize", "restyle", "remove-background", "router"}
    assert cheap == whole


def test_every_replica_runs_with_the_services_ray_environment(serve_app: dict[str, Any]) -> None:
    """The Ray settings of stylefleet.config.RAY_ENVIRONMENT (objects up to 2 MiB inline, metrics
    exported once a second, ...) reach the model replicas' own processes, not only the driver."""
    environ = psutil.Process(deployment_info("remove-background")["pid"]).environ()
    assert {name: environ.get(name) for name in RAY_ENVIRONMENT} == {name: os.environ[name] for name in RAY_ENVIRONMENT}


def test_live_answers(client: httpx.Client) -> None:
    assert client.get("/healthz/live").json() == {"status": "alive"}


@pytest.mark.parametrize("style", PAINTING_STYLES)
def test_each_painting_style_returns_a_changed_image_of_the_same_size(client: httpx.Client, style: str) -> None:
    r = _post(client, style, {"image": samples.encoded(samples.cat(), "JPEG", quality=95)})
    out = _png(r)
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-stylefleet-style"] == style
    assert r.headers["x-request-id"]
    assert out.shape == samples.cat().shape
    assert np.abs(out.astype(int) - samples.cat()).mean() > 10


def test_restyle_takes_a_style_image(client: httpx.Client) -> None:
    r = _post(
        client, "restyle", {"image": samples.encoded(samples.astronaut()), "style_image": samples.encoded(samples.cat())}, format="webp"
    )
    assert r.headers["content-type"] == "image/webp"
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - samples.astronaut()).mean() > 10


def test_restyle_keeps_a_style_pictures_vector_and_gives_the_same_bytes(client: httpx.Client) -> None:
    """A batch job sends one style picture with every photo: the replica computes its vector once."""
    style = samples.encoded(samples.coffee())
    files = {"image": samples.encoded(samples.cat()), "style_image": style}
    first = _post(client, "restyle", files)
    before = deployment_info("restyle")["style_vectors"]
    again = _post(client, "restyle", files)
    after = deployment_info("restyle")["style_vectors"]
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]


def test_remove_background_makes_corners_transparent_and_keeps_the_face(client: httpx.Client) -> None:
    out = _png(_post(client, "remove-background", {"image": samples.encoded(samples.astronaut())}))
    assert out.shape == (512, 512, 4)
    assert out[0, 0, 3] < 16 and out[0, -1, 3] < 16
    assert out[80:150, 190:260, 3].min() > 240


def test_remove_background_flattens_onto_bg_color_as_jpeg(client: httpx.Client) -> None:
    r = _post(client, "remove-background", {"image": samples.encoded(samples.astronaut())}, bg_color="#00ff00", format="jpeg")
    assert r.headers["content-type"] == "image/jpeg"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (512, 512, 3)
    assert out[3, 3, 1] > 230 and out[3, 3, 0] < 30


def test_32_concurrent_requests_all_succeed(base_url: str) -> None:
    photo = samples.encoded(samples.cat(), "JPEG", quality=90)
    styles = PAINTING_STYLES[:4]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as c:
            return await asyncio.gather(
                *(c.post(f"/v1/styles/{styles[i % 4]}", files={"image": ("c.jpg", photo, "image/jpeg")}) for i in range(32))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 32
    assert all(Image.open(io.BytesIO(r.content)).size == (451, 300) for r in responses)


def _set_batching(serve_app: dict[str, Any], deployment: str, user_config: dict[str, Any]) -> None:
    redeploy(serve_app, {deployment: user_config})


_info = deployment_info


def test_same_bytes_alone_and_in_a_batch_of_8(serve_app: dict[str, Any], client: httpx.Client) -> None:
    photo = samples.encoded(samples.astronaut())
    others = [samples.encoded(np.ascontiguousarray(np.roll(samples.astronaut(), 16 * i, axis=1))) for i in range(1, 8)]
    alone = _post(client, "bold-blocks", {"image": photo})
    assert alone.status_code == 200
    # A long wait makes the 8 concurrent requests coalesce into one batch.
    _set_batching(serve_app, "stylize", {"max_batch_size": 8, "batch_wait_timeout_s": 2.0})
    try:
        before = _info("stylize")["batch_sizes"].get(8, 0)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=serve_app["url"], timeout=120) as c:
                files = [photo] + others
                return await asyncio.gather(*(c.post("/v1/styles/bold-blocks", files={"image": ("p.png", f, "image/png")}) for f in files))

        together = asyncio.run(burst())
        assert [r.status_code for r in together] == [200] * 8
        assert _info("stylize")["batch_sizes"].get(8, 0) == before + 1  # they really ran as one batch of 8
        assert together[0].content == alone.content
    finally:
        _set_batching(serve_app, "stylize", {"max_batch_size": 4, "batch_wait_timeout_s": 0.0})


def test_reconfigure_changes_batching_without_restarting_the_replica(serve_app: dict[str, Any], client: httpx.Client) -> None:
    before = _info("remove-background")
    _set_batching(serve_app, "remove-background", {"max_batch_size": 3, "batch_wait_timeout_s": 0.05})
    try:
        after = _info("remove-background")
        assert after["replica"] == before["replica"]
        assert (after["max_batch_size"], after["batch_wait_timeout_s"]) == (3, 0.05)
        assert _post(client, "remove-background", {"image": samples.encoded(samples.cat())}).status_code == 200
    finally:
        _set_batching(serve_app, "remove-background", {"max_batch_size": 4, "batch_wait_timeout_s": 0.0})


def test_a_bad_user_config_fails_the_deploy_with_the_field_named(serve_app: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="max_batch_size"):
        _set_batching(serve_app, "remove-background", {"max_batch_size": 64, "batch_wait_timeout_s": 0.0})
    _set_batching(serve_app, "remove-background", {"max_batch_size": 4, "batch_wait_timeout_s": 0.0})


def test_one_bad_image_in_a_batch_harms_no_other(base_url: str) -> None:
    good = samples.encoded(samples.cat())
    tiny = samples.encoded(np.zeros((8, 8, 3), np.uint8))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as c:
            return await asyncio.gather(
                *(c.post("/v1/styles/frost", files={"image": ("x.png", tiny if i == 3 else good, "image/png")}) for i in range(8))
            )

    codes = [r.status_code for r in asyncio.run(burst())]
    assert codes == [200, 200, 200, 400, 200, 200, 200, 200]
