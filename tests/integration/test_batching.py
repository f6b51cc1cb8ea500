"""The backlog queue and the pixel budget on the real service: what forms a batch (never speed).

A large photo keeps the stylize replica busy; small requests are then sent one at a time, each
only once the replica reports it queued, so every one of them arrives while the model runs. The
replica's own counters say which batches ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import samples
from tests.integration.conftest import deployment_info, redeploy

pytestmark = pytest.mark.integration

SHIPPED = {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}  # serve_config.yaml's
TESTED = {"max_batch_size": 8, "batch_wait_timeout_s": 0.0}
BLOCKER = samples.encoded(samples.scaled(samples.astronaut(), 3.0), "JPEG")  # 1536 x 1536: 2.4 MP, over the 2 MiP budget
SMALL = samples.encoded(np.ascontiguousarray(samples.astronaut()[::8, ::8]), "PNG")  # 64 x 64


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture()
def stylize_batching(serve_app: dict[str, Any]) -> Iterator[Callable[[dict[str, Any]], None]]:
    def apply(user_config: dict[str, Any]) -> None:
        redeploy(serve_app, {"stylize": {**TESTED, **user_config}})

    yield apply
    redeploy(serve_app, {"stylize": SHIPPED})


def _backlog_behind_a_blocker(base_url: str, smalls: int) -> tuple[dict[int, int], list[httpx.Response]]:
    """The blocker, then ``smalls`` requests each confirmed queued; returns the batches that ran."""
    before = deployment_info("stylize")
    with httpx.Client(base_url=base_url, timeout=300) as client, ThreadPoolExecutor(smalls + 1) as pool:

        def post(data: bytes, **fields: str) -> httpx.Response:
            return client.post("/v1/styles/frost", files={"image": ("p.jpg", data, "image/jpeg")}, data=fields)

        futures: list[Future[httpx.Response]] = [pool.submit(post, BLOCKER, max_side="1536")]
        _until(lambda: deployment_info("stylize")["running_batches"] == 1, "the blocker to start")
        for i in range(smalls):
            futures.append(pool.submit(post, SMALL))
            _until(lambda i=i: deployment_info("stylize")["queued"] == i + 1, f"small request {i + 1} to queue")
        assert deployment_info("stylize")["running_batches"] == 1, "the blocker ended before the backlog was in place"
        responses = [f.result() for f in futures]
    after = deployment_info("stylize")["batch_sizes"]
    ran = {int(k): int(v) - int(before["batch_sizes"].get(k, 0)) for k, v in after.items()}
    return {k: v for k, v in ran.items() if v}, responses


def test_a_busy_models_backlog_becomes_its_next_batch(base_url: str, stylize_batching: Callable[[dict[str, Any]], None]) -> None:
    stylize_batching({"queue": "backlog"})
    ran, responses = _backlog_behind_a_blocker(base_url, 8)
    assert [r.status_code for r in responses] == [200] * 9
    assert ran == {1: 1, 8: 1}, "the blocker alone, then the whole backlog as one batch of 8"


def test_an_image_over_the_pixel_budget_runs_alone_and_the_budget_splits_a_backlog(
    base_url: str, stylize_batching: Callable[[dict[str, Any]], None]
) -> None:
    stylize_batching({"max_batch_pixels": 3 * 64 * 64})
    assert deployment_info("stylize")["max_batch_pixels"] == 3 * 64 * 64
    ran, responses = _backlog_behind_a_blocker(base_url, 6)
    assert [r.status_code for r in responses] == [200] * 7
    assert _size(responses[0].content) == (1536, 1536), "over the budget, it still runs: alone"
    assert ran == {1: 1, 3: 2}, "the blocker alone; six 64x64 images in batches of three (the budget), not one of six"


def test_serve_batch_mode_serves_behind_the_same_queue_interface_and_is_switched_live(
    base_url: str, stylize_batching: Callable[[dict[str, Any]], None]
) -> None:
    stylize_batching({"queue": "serve-batch"})
    replica = deployment_info("stylize")
    assert replica["queue"] == "serve-batch"
    ran, responses = _backlog_behind_a_blocker(base_url, 3)
    assert [r.status_code for r in responses] == [200] * 4
    assert _size(responses[1].content) == (64, 64)
    assert ran == {1: 4}, "@serve.batch closes each batch as it forms, while the model is busy: one request each"
    stylize_batching({"queue": "backlog"})
    assert deployment_info("stylize")["replica"] == replica["replica"], "switched by reconfigure, without a restart"


def _size(data: bytes) -> tuple[int, int]:
    import io

    return Image.open(io.BytesIO(data)).size


def test_a_lone_request_runs_on_the_lone_call_session_and_a_busy_replicas_do_not(base_url: str) -> None:
    """The first request reaches an idle replica: its batch runs alone (every core). A second one
    sent while the first is still in its batch runs beside it on its own one-thread call."""
    before = deployment_info("remove-background")
    assert before["lone_call_threads"] == 2 and before["model_calls"] == 2
    slow = samples.encoded(samples.scaled(samples.astronaut(), 3.0), "JPEG")  # 1536 px, matted: seconds in its batch
    with httpx.Client(base_url=base_url, timeout=300) as client, ThreadPoolExecutor(2) as pool:

        def post(data: bytes, **fields: str) -> httpx.Response:
            return client.post("/v1/styles/remove-background", files={"image": ("p.jpg", data, "image/jpeg")}, data=fields)

        first = pool.submit(post, slow, max_side="1536", alpha_matting="true")
        _until(lambda: deployment_info("remove-background")["running_batches"] == 1, "the first request's batch to start")
        second = post(SMALL)
        assert deployment_info("remove-background")["running_batches"] == 1, "the first batch ended before the second ran"
        assert second.status_code == 200, second.text
        assert first.result().status_code == 200, first.result().text
    after = deployment_info("remove-background")
    batches = sum(after["batch_sizes"].values()) - sum(before["batch_sizes"].values())
    assert batches == 2
    assert after["lone_batches"] - before["lone_batches"] == 1


@pytest.mark.parametrize("deployment", ["stylize", "restyle", "remove-background"])
def test_an_onnx_replica_warms_its_batch_sizes_before_taking_requests(serve_app: dict[str, Any], deployment: str) -> None:
    """onnx_session.warm at start: the arena's pages are touched before any request."""
    info = deployment_info(deployment)
    assert info["warm_up_seconds"] is not None and info["warm_up_seconds"] > 0
    assert info["rss_warmed_bytes"] > info["rss_start_bytes"]
