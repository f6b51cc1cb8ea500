"""Prometheus text on the metrics port: stylefleet's own series and Ray Serve's, with plausible values."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import samples
from tests.integration.conftest import redeploy, router_settings
from tests.samples import ROOT

pytestmark = pytest.mark.integration

STYLE = "ink-wash"  # only this test sends traffic to it after the per-style checks
MODELS = {"multistyle26", "arbitrary", "u2netp"}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} from one scrape."""
    text = httpx.get(url, timeout=30).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(series: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for tags, v in series.get(name, []) if all(tags.get(k) == want for k, want in labels.items()))


def wait_for(url: str, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 90) -> dict[str, Any]:
    """Ray exports on an interval: poll (bounded) until the figures are in."""
    deadline = time.monotonic() + timeout_s
    series = scrape(url)
    while not ready(series) and time.monotonic() < deadline:
        time.sleep(1.0)
        series = scrape(url)
    return series


def settled(url: str, name: str, quiet_s: float = 15.0, timeout_s: float = 90, **labels: str) -> dict[str, Any]:
    """A scrape once ``name`` stopped moving for ``quiet_s`` (longer than Ray's export interval):
    traffic that earlier tests sent (batch jobs send many images) is all exported by then, so it
    does not land in this module's deltas."""
    deadline = time.monotonic() + timeout_s
    series = scrape(url)
    steady_since = time.monotonic()
    while time.monotonic() - steady_since < quiet_s and time.monotonic() < deadline:
        time.sleep(1.0)
        latest = scrape(url)
        if total(latest, name, **labels) != total(series, name, **labels):
            steady_since = time.monotonic()
        series = latest
    return series


@pytest.fixture(scope="module")
def traffic(serve_app: dict[str, Any]) -> dict[str, Any]:
    """One shadow comparison (so the shadow series exist whatever ran before), then 5 good and
    2 bad requests to one style; wait until the metrics show them."""
    url = serve_app["metrics_url"]
    _one_shadow_comparison(serve_app)
    before = settled(url, "ray_stylefleet_batch_queue_seconds_count", deployment="stylize")
    photo = samples.encoded(samples.cat())
    with httpx.Client(base_url=serve_app["url"], timeout=120) as c:
        for _ in range(5):
            assert c.post(f"/v1/styles/{STYLE}", files={"image": ("c.png", photo, "image/png")}).status_code == 200
        for _ in range(2):
            assert c.post(f"/v1/styles/{STYLE}", files={"image": ("c.png", photo, "image/png")}, data={"strength": "7"}).status_code == 422
    name = "ray_stylefleet_images_total"
    queued = "ray_stylefleet_batch_queue_seconds_count"
    after = wait_for(  # router and replica export on their own intervals: wait for both
        url,
        lambda s: total(s, name, style=STYLE, outcome="ok") - total(before, name, style=STYLE, outcome="ok") >= 5
        and total(s, name, style=STYLE, outcome="invalid_params") - total(before, name, style=STYLE, outcome="invalid_params") >= 2
        and total(s, queued, deployment="stylize") - total(before, queued, deployment="stylize") >= 5
        and {labels["model"] for labels, _ in s.get("ray_stylefleet_model_load_seconds_count", [])} >= MODELS
        and total(s, "ray_stylefleet_shadow_ssim_count") >= 1
        and bool(_gate_values(s)),
    )
    return {"before": before, "after": after}


def _one_shadow_comparison(serve_app: dict[str, Any]) -> None:
    redeploy(serve_app, {"router": router_settings(serve_app, splits={"oil-paint": {"a": 1}}, shadows={"oil-paint": {"b": 100}})})
    try:
        with httpx.Client(base_url=serve_app["url"], timeout=120) as c:
            photo = samples.encoded(samples.cat())
            assert c.post("/v1/styles/oil-paint", files={"image": ("c.png", photo, "image/png")}).status_code == 200
            deadline = time.monotonic() + 60
            while not any(r["comparisons"] for r in c.get("/v1/shadow").json()["comparisons"]) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        redeploy(serve_app, {})  # back to the session's own router settings


def _gate_values(series: dict[str, Any]) -> list[float]:
    """The shadow gate gauge of the comparison ``_one_shadow_comparison`` made."""
    return [v for tags, v in series.get("ray_stylefleet_shadow_gate", []) if (tags.get("style"), tags.get("shadow")) == ("oil-paint", "b")]


def _delta(traffic: dict[str, Any], name: str, **labels: str) -> float:
    return total(traffic["after"], name, **labels) - total(traffic["before"], name, **labels)


def test_images_are_counted_per_style_variant_and_outcome(traffic: dict[str, Any]) -> None:
    assert _delta(traffic, "ray_stylefleet_images_total", style=STYLE, variant="default", outcome="ok") == 5
    assert _delta(traffic, "ray_stylefleet_images_total", style=STYLE, outcome="invalid_params") == 2


def test_latency_histogram_counts_every_request(traffic: dict[str, Any]) -> None:
    name = "ray_stylefleet_request_latency_seconds"
    assert _delta(traffic, f"{name}_count", style=STYLE, variant="default") == 7
    assert _delta(traffic, f"{name}_bucket", style=STYLE, variant="default", le="+Inf") == 7
    assert _delta(traffic, f"{name}_sum", style=STYLE) > 0


def test_batch_size_and_queue_time_per_deployment(traffic: dict[str, Any]) -> None:
    # The 5 good requests reached the stylize replica (the 2 bad ones stopped at the router).
    assert _delta(traffic, "ray_stylefleet_batch_queue_seconds_count", deployment="stylize") == 5
    batches = _delta(traffic, "ray_stylefleet_batch_size_count", deployment="stylize")
    images = _delta(traffic, "ray_stylefleet_batch_size_sum", deployment="stylize")  # Ray: bucket midpoints
    assert 1 <= batches <= 5 and batches <= images <= 5
    assert _delta(traffic, "ray_stylefleet_batch_size_bucket", deployment="stylize", le="+Inf") == batches


def test_model_load_time_is_exported(traffic: dict[str, Any]) -> None:
    after = traffic["after"]
    for model in MODELS:
        starts = total(after, "ray_stylefleet_model_load_seconds_count", model=model)
        seconds = total(after, "ray_stylefleet_model_load_seconds_sum", model=model)
        assert starts >= 1 and 0 < seconds / starts < 300, model


def test_shadow_gate_gauge_is_pending_before_enough_comparisons(traffic: dict[str, Any]) -> None:
    assert _gate_values(traffic["after"]) == [-1.0]  # one comparison of the 20 the default gate needs


def test_no_gpu_series_on_a_cpu_machine(traffic: dict[str, Any]) -> None:
    assert not [n for n in traffic["after"] if n.startswith("ray_stylefleet_gpu_")]


def test_ray_serve_builtin_series_are_there(traffic: dict[str, Any]) -> None:
    names = set(traffic["after"])
    for name in (
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_num_http_requests_total",
        "ray_serve_replica_processing_queries",
    ):
        assert name in names, name


def test_dashboard_queries_use_exported_metric_names(traffic: dict[str, Any]) -> None:
    """Every metric the Grafana dashboard queries is one the service exports (GPU ones need a GPU)."""
    dashboard = json.loads((ROOT / "k8s" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(ray_[a-z0-9_]+)", e)}
    exported = set(traffic["after"])
    needs_gpu = {m for m in used if "gpu" in m}
    missing = sorted(m for m in used - needs_gpu if m not in exported)
    assert used and not missing, missing
