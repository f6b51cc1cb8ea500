"""Memory admission on the real service: a replica with a small memory budget (so no real
out-of-memory is needed) refuses what could never fit it and serializes what fits one at a time.

A dedicated small application runs beside the session's (one multistyle26 replica, one network
call at a time); the replica's own figures (``info()``) say how much room its budget leaves once
loaded, and the test sizes its images from that.
"""

from __future__ import annotations

import asyncio
import copy
import io
import math
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from stylefleet.deployments.admission import DECODE_BYTES_PER_PIXEL
from stylefleet.deployments.kinds import KINDS
from tests import samples

pytestmark = pytest.mark.integration

APP = "memory"
DEPLOYMENT = "small-stylize"
BUDGET_BYTES = 1024 * 1024 * 1024  # the idle replica (~0.4-0.6 GiB) plus room for about one 700 px image
COST = KINDS["multistyle26"].memory
assert COST is not None


def memory_application() -> dict[str, Any]:
    return {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": "stylefleet.router.app:build_app",
        "args": {
            "jobs": {"storage": tempfile.mkdtemp(prefix=f"stylefleet-{APP}-jobs-")},
            "deployments": {
                DEPLOYMENT: {
                    "model": "multistyle26",
                    "num_cpus": 0.1,
                    "threads": 1,
                    "model_calls": 1,
                    "lone_call": False,
                    "max_ongoing_requests": 8,
                    "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4},
                    "memory_budget_bytes": BUDGET_BYTES,
                    "memory_max_waiting": 8,
                },
            },
            "styles": {"frost": {"deployment": DEPLOYMENT, "params": {"style": "14"}}},
        },
        "deployments": [{"name": DEPLOYMENT, "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}],
    }


@pytest.fixture(scope="module")
def memory_app(serve_app: dict[str, Any]) -> Iterator[str]:
    config = copy.deepcopy(serve_app["config"])
    application = memory_application()
    config["applications"].append(application)
    try:
        serve_app["cluster"].deploy(config, timeout_s=300)
        yield f"{serve_app['proxy_url']}/{APP}"
    finally:
        serve_app["cluster"].deploy(serve_app["config"], timeout_s=120)  # the small application goes
        shutil.rmtree(application["args"]["jobs"]["storage"], ignore_errors=True)


def _info() -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT, APP).info.remote().result()


def _jpeg(side: int) -> bytes:
    photo = Image.fromarray(samples.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    return samples.encoded(np.asarray(photo), "JPEG", quality=90)


def _post(url: str, image: bytes, side: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/styles/frost", files={"image": ("p.jpg", image, "image/jpeg")}, data={"max_side": str(side)}, timeout=120)


def test_an_image_over_the_memory_budget_is_413_naming_the_largest_size(memory_app: str) -> None:
    room = _info()["memory_admission_budget_bytes"]
    assert 0 < room < BUDGET_BYTES
    largest = COST.largest_side(room)
    side = 2048  # 2.9 GB at multistyle26's 700 B/px: far over any room a 1 GiB budget leaves
    r = _post(memory_app, _jpeg(side), side)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "image_too_large_for_memory"
    assert f"largest accepted at these settings: {largest}x{largest} px" in error["message"]


def test_the_largest_size_named_is_accepted(memory_app: str) -> None:
    largest = COST.largest_side(_info()["memory_admission_budget_bytes"])
    r = _post(memory_app, _jpeg(largest), largest)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (largest, largest)


def test_concurrent_large_requests_that_fit_one_at_a_time_all_answer_200(memory_app: str) -> None:
    before = _info()
    room = before["memory_admission_budget_bytes"]
    # Each needs over half the room: no two are ever admitted together, so they wait their turn.
    side = math.isqrt(int(0.6 * room / (COST.bytes_per_pixel + DECODE_BYTES_PER_PIXEL)))
    assert COST.of(side * side, side * side) * 2 > room >= COST.of(side * side, side * side)
    image = _jpeg(side)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{memory_app}/v1/styles/frost", files={"image": ("p.jpg", image, "image/jpeg")}, data={"max_side": str(side)})
                for _ in range(4)
            ))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 4, [r.text[:200] for r in responses]
    after = _info()
    assert after["memory_waited_total"] - before["memory_waited_total"] >= 1  # some waited for memory
    assert after["memory_peak_reserved_bytes"] <= room
    assert after["memory_reserved_bytes"] == 0 and after["memory_waiting"] == 0  # all released
