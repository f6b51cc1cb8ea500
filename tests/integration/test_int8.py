"""remove-background's two variants over real HTTP: fp32 (the shipped network) and int8 (its
quantized copy, built into the model cache), the int8 one a shadow with no traffic of its own."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, run_batch
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import MODELS, resolve
from stylefleet.imageio import decode
from tests import samples
from tests.integration.conftest import deployment_info, redeploy, router_settings

pytestmark = pytest.mark.integration

PHOTO = samples.encoded(samples.astronaut(), "JPEG", quality=90)


def _post(client: httpx.Client, variant: str) -> httpx.Response:
    r = client.post("/v1/styles/remove-background", files={"image": ("a.jpg", PHOTO, "image/jpeg")}, data={"variant": variant})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize(("variant", "model"), [("fp32", "u2netp"), ("int8", "u2netp_int8")])
def test_a_forced_variant_is_served_by_its_network(client: httpx.Client, variant: str, model: str) -> None:
    r = _post(client, variant)
    assert r.headers["x-stylefleet-variant"] == variant
    assert r.headers["x-stylefleet-model-sha256"] == MODELS[model].sha256


def test_the_int8_matte_differs_from_fp32s(client: httpx.Client) -> None:
    fp32 = decode(_post(client, "fp32").content, max_pixels=10**8).pixels
    int8 = decode(_post(client, "int8").content, max_pixels=10**8).pixels
    assert fp32.shape == int8.shape and not np.array_equal(fp32[:, :, 3], int8[:, :, 3])


def test_the_fp32_variant_answers_what_the_fp32_network_does_in_process(client: httpx.Client) -> None:
    served = _post(client, "fp32").content
    model = U2NetModel(resolve("u2netp"), RuntimeOptions(threads=1))
    request = ModelRequest({}, {}, OutputSpec("png"), files={"image": PHOTO})
    [reply] = encode_outcomes([request], run_batch(model, [request]), model.checksum)
    assert served == reply.data  # type: ignore[union-attr]


def test_styles_name_each_variants_precision(client: httpx.Client) -> None:
    styles = {s["name"]: s for s in client.get("/v1/styles").json()["styles"]}
    variants = {v["name"]: v for v in styles["remove-background"]["variants"]}
    assert {n: (v["precision"], v["weight"], v["shadow_percent"]) for n, v in variants.items()} == {
        "fp32": ("fp32", 100, 0.0),
        "int8": ("int8", 0, 10),
    }
    assert {v["precision"] for v in styles["frost"]["variants"]} == {"fp32"}


def test_the_int8_replica_idles_within_its_budget(serve_app: dict[str, Any]) -> None:
    info = deployment_info("remove-background-int8")
    budget = serve_app["config"]["applications"][0]["args"]["deployments"]["remove-background-int8"]["memory_budget_bytes"]
    print(f"remove-background-int8 rss: start {info['rss_start_bytes']}, warmed {info['rss_warmed_bytes']}, now {info['rss_bytes']}")
    print(f"remove-background rss: warmed {deployment_info('remove-background')['rss_warmed_bytes']}")
    assert info["rss_warmed_bytes"] < budget


def test_the_int8_shadow_is_judged_by_its_mattes_and_passes_its_gate(serve_app: dict[str, Any], client: httpx.Client) -> None:
    """The shipped split (fp32 takes the traffic) with every request also sent to the int8 network:
    /v1/shadow compares the two mattes and the gate holds on real photos."""
    photos = [samples.encoded(p(), "JPEG", quality=90) for p in (samples.cat, samples.coffee, samples.astronaut)]
    shipped = router_settings(serve_app, splits={}, shadows={})
    every = router_settings(serve_app, splits={}, shadows={"remove-background": {"int8": 100}})
    redeploy(serve_app, {"router": {**every, "gates": {"min_comparisons": 3}}})
    try:
        before = _int8_row(client)
        seen = before["comparisons"] + before["failed"] if before else 0
        for photo in photos:
            r = client.post("/v1/styles/remove-background", files={"image": ("p.jpg", photo, "image/jpeg")})
            assert r.status_code == 200 and r.headers["x-stylefleet-variant"] == "fp32"
        deadline = time.monotonic() + 60
        row = before
        while time.monotonic() < deadline:
            row = _int8_row(client)
            if row is not None and row["comparisons"] + row["failed"] >= seen + len(photos):
                break
            time.sleep(0.2)
        assert row is not None and row["failed"] == 0 and row["comparisons"] >= len(photos)
        assert row["metric"] == "matte" and row["gate"]["verdict"] == "pass", row
        assert row["iou_mean"] >= 0.98 and row["mean_abs_alpha_diff_mean"] <= 0.01
    finally:
        redeploy(serve_app, {"router": shipped})


def _int8_row(client: httpx.Client) -> dict[str, Any] | None:
    rows = [
        c
        for c in client.get("/v1/shadow").json()["comparisons"]
        if (c["style"], c["primary"], c["shadow"], c["metric"]) == ("remove-background", "fp32", "int8", "matte")
    ]
    return rows[0] if rows else None
