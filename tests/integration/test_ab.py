"""A/B over real HTTP: variant header, forced and sticky variants, live weight change, shadows."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests import samples
from tests.integration.conftest import deployment_info, redeploy, router_settings

pytestmark = pytest.mark.integration

PHOTO = samples.encoded(samples.cat(), "JPEG", quality=90)
SHIPPED_OIL_PAINT = {"splits": {"oil-paint": {"a": 50, "b": 50}}, "shadows": {"oil-paint": {}}}


def _post(client: httpx.Client, **kw: Any) -> httpx.Response:
    return client.post("/v1/styles/oil-paint", files={"image": ("c.jpg", PHOTO, "image/jpeg")}, **kw)


def test_every_response_names_its_variant(client: httpx.Client) -> None:
    assert client.post("/v1/styles/frost", files={"image": ("c.jpg", PHOTO, "image/jpeg")}).headers["x-stylefleet-variant"] == "default"
    assert _post(client).headers["x-stylefleet-variant"] in {"a", "b"}


def test_styles_list_variants_and_weights(client: httpx.Client) -> None:
    styles = {s["name"]: s for s in client.get("/v1/styles").json()["styles"]}
    variants = {v["name"]: v["weight"] for v in styles["oil-paint"]["variants"]}
    assert variants == {"a": 50, "b": 50}


def test_forced_variant_and_unknown_variant(client: httpx.Client) -> None:
    assert _post(client, data={"variant": "b"}).headers["x-stylefleet-variant"] == "b"
    assert _post(client, params={"variant": "a"}).headers["x-stylefleet-variant"] == "a"
    r = _post(client, data={"variant": "zz"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_params"


def test_client_id_is_sticky(client: httpx.Client) -> None:
    for key in ("alice", "bob", "carol"):
        by_header = {_post(client, headers={"X-Client-Id": key}).headers["x-stylefleet-variant"] for _ in range(3)}
        by_field = _post(client, data={"client_id": key}).headers["x-stylefleet-variant"]
        assert len(by_header) == 1 and by_header == {by_field}


def test_weights_change_live_with_no_failed_request_and_no_model_restart(serve_app: dict[str, Any], base_url: str) -> None:
    replica_before = deployment_info("stylize")["replica"]
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:  # bounded: at most 120 requests or until told to stop
        with httpx.Client(base_url=base_url, timeout=120) as c:
            for i in range(120):
                if stop.is_set():
                    return
                sent = time.monotonic()  # a request sent before the change may end after it, on the old split
                r = c.post("/v1/styles/oil-paint", files={"image": ("c.jpg", PHOTO, "image/jpeg")}, headers={"X-Client-Id": f"k{i}"})
                results.append((sent, r.status_code, r.headers.get("x-stylefleet-variant", "")))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(results) < 3:
            time.sleep(0.1)
        redeploy(serve_app, {"router": router_settings(serve_app, splits={"oil-paint": {"a": 0, "b": 100}}, shadows={})})
        changed_at = time.monotonic()
        deadline = changed_at + 60
        while sum(1 for t, _, _ in results if t > changed_at) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=120)
        redeploy(serve_app, {"router": router_settings(serve_app, **SHIPPED_OIL_PAINT)})
    assert [code for _, code, _ in results if code != 200] == []
    assert {v for t, _, v in results if t > changed_at} == {"b"}
    assert deployment_info("stylize")["replica"] == replica_before


def test_shadow_variant_is_compared_and_the_user_response_is_unchanged(serve_app: dict[str, Any], client: httpx.Client) -> None:
    plain = _post(client, data={"variant": "a"})
    redeploy(serve_app, {"router": router_settings(serve_app, splits={"oil-paint": {"a": 1}}, shadows={"oil-paint": {"b": 100}})})
    try:
        shadowed = _post(client)
        assert shadowed.headers["x-stylefleet-variant"] == "a"
        assert shadowed.content == plain.content
        deadline = time.monotonic() + 60
        report: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            report = [c for c in client.get("/v1/shadow").json()["comparisons"] if (c["primary"], c["shadow"]) == ("a", "b")]
            if report and report[0]["comparisons"] >= 1:
                break
            time.sleep(0.2)
        [row] = report
        assert row["style"] == "oil-paint" and row["failed"] == 0
        assert 10 < row["psnr_db_mean"] < 60 and 0 < row["ssim_mean"] < 1 and 0 < row["mean_abs_diff_mean"] < 128
        styles = {s["name"]: s for s in client.get("/v1/styles").json()["styles"]}
        assert {v["name"]: v["shadow_percent"] for v in styles["oil-paint"]["variants"]} == {"a": 0.0, "b": 100}
    finally:
        redeploy(serve_app, {"router": router_settings(serve_app, **SHIPPED_OIL_PAINT)})


def test_cutout_shadows_are_compared_by_matte_and_gated(serve_app: dict[str, Any], client: httpx.Client) -> None:
    shadows = router_settings(serve_app, splits={"cutout-ab": {"a": 1}}, shadows={"cutout-ab": {"same": 100, "eroded": 100}})
    redeploy(serve_app, {"router": {**shadows, "gates": {"min_comparisons": 2}}})
    try:
        for _ in range(2):
            r = client.post("/v1/styles/cutout-ab", files={"image": ("c.jpg", PHOTO, "image/jpeg")})
            assert r.status_code == 200 and r.headers["x-stylefleet-variant"] == "a"
        deadline = time.monotonic() + 60
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = {c["shadow"]: c for c in client.get("/v1/shadow").json()["comparisons"] if c["style"] == "cutout-ab"}
            if len(rows) == 2 and all(c["comparisons"] + c["failed"] >= 2 for c in rows.values()):
                break
            time.sleep(0.2)
        same, eroded = rows["same"], rows["eroded"]
        assert (same["metric"], same["failed"], same["gate"]["verdict"]) == ("matte", 0, "pass")
        assert same["iou_mean"] > 0.999
        assert (eroded["metric"], eroded["gate"]["verdict"]) == ("matte", "fail")
        assert "max_edge_error" in eroded["gate"]["failing"] and eroded["edge_error_mean"] > same["edge_error_mean"]
    finally:
        redeploy(serve_app, {"router": router_settings(serve_app, **SHIPPED_OIL_PAINT)})
