"""On a real GPU through Ray Serve: NVML gauges exported, and two deployments sharing one card at
``num_gpus: 0.5``, each capped to its share, one running out of memory without harming the other.

Skipped without CUDA (the whole tier) and without Ray (the GPU machine this was planned for has
none; bring its wheels as docs/gpu.md "GPU benchmark" says to run these).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from stylefleet.bench import weights
from stylefleet.gpu import DEFAULT_HEADROOM_BYTES, memory_cap_bytes
from stylefleet.tools import local
from tests import samples
from tests.gpu.conftest import needs_ray

pytestmark = [pytest.mark.gpu, needs_ray]

HALF = 0.5
BIG_SIDE = 4096  # AnimeGANv2 at 4096 px: a batch of 16 of these cannot fit in half of any current card


def _anime(name: str) -> dict[str, Any]:
    return {
        "model": "animeganv2_paprika", "device": "cuda", "num_gpus": HALF, "num_cpus": 0.5,
        "max_ongoing_requests": 32, "max_queued_requests": 64,
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
    }


def _config(port: int, models_dir: Path) -> dict[str, Any]:
    path = models_dir / "paprika.pt"
    sha = weights.save_animegan(path)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 600},
        "applications": [
            {
                "name": "stylefleet",
                "route_prefix": "/",
                "import_path": "stylefleet.router.app:build_app",
                "args": {
                    "limits": {"max_pixels": 40_000_000},
                    "router": {"num_replicas": 1, "num_cpus": 0, "model_timeout_s": 550},
                    "jobs": {"storage": str(models_dir / "jobs")},
                    "models": {"animeganv2_paprika": {"path": str(path), "sha256": sha}},
                    "deployments": {"anime-a": _anime("anime-a"), "anime-b": _anime("anime-b")},
                    "styles": {
                        "a-big": {"deployment": "anime-a", "params": {"face_crop": False, "max_side": BIG_SIDE}},
                        "b-small": {"deployment": "anime-b", "params": {"face_crop": False, "max_side": 512}},
                    },
                },
                "deployments": [
                    # a: batches of 16 huge images, no pixel budget to stop them: it must run out of memory
                    {
                        "name": "anime-a",
                        "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.5, "max_batch_pixels": 16 * BIG_SIDE**2},
                    },
                    {"name": "anime-b", "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = local.free_port()
    cluster = local.LocalCluster(metrics_export_port=local.free_port(), log_to_driver=False)
    cluster.start()
    try:
        cluster.deploy(_config(port, tmp_path_factory.mktemp("gpu-models")), timeout_s=600)
        yield {"url": f"http://127.0.0.1:{port}", "metrics_url": f"http://127.0.0.1:{cluster.metrics_export_port}/metrics"}
    finally:
        cluster.stop()


def _info(deployment: str) -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(deployment, "stylefleet").info.remote().result()


async def _post(url: str, style: str, image: bytes, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        replies = await asyncio.gather(
            *(client.post(f"/v1/styles/{style}", files={"image": ("a.png", image, "image/png")}) for _ in range(n))
        )
    return [r.status_code for r in replies]


def test_each_half_share_is_capped_and_both_fit_on_the_card(served: dict[str, Any]) -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    caps = [_info(d)["gpu_memory_cap_bytes"] for d in ("anime-a", "anime-b")]
    assert caps == [memory_cap_bytes(HALF, total)] * 2
    assert sum(caps) + 2 * DEFAULT_HEADROOM_BYTES <= total


def test_one_deployment_out_of_memory_is_split_and_the_other_keeps_serving(served: dict[str, Any]) -> None:
    from PIL import Image

    huge = samples.encoded(np.asarray(Image.fromarray(samples.astronaut()).resize((BIG_SIDE, BIG_SIDE))), "JPEG", quality=90)
    image = samples.encoded(samples.astronaut())

    async def both() -> tuple[list[int], list[int]]:
        big = asyncio.create_task(_post(served["url"], "a-big", huge, 16))
        await asyncio.sleep(1.0)  # a's batch is running
        small = await _post(served["url"], "b-small", image, 16)
        return await big, small

    big, small = asyncio.run(both())
    a, b = _info("anime-a"), _info("anime-b")
    assert a["oom_total"] >= 1, f"anime-a never ran out of memory: {a}"
    assert a["effective_max_batch_weight"] < 16  # halved after the out-of-memory
    assert set(big) <= {200, 503} and big.count(200) >= 1, big  # split and retried; a single image that cannot fit is a 503
    assert small == [200] * 16, small
    assert b["oom_total"] == 0


def test_nvml_gauges_are_exported_per_replica(served: dict[str, Any]) -> None:
    image = samples.encoded(samples.astronaut())
    assert asyncio.run(_post(served["url"], "b-small", image, 4)) == [200] * 4
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(served["metrics_url"], timeout=10).text
        if "ray_stylefleet_gpu_memory_used_bytes{" in text and "ray_stylefleet_gpu_utilization_ratio{" in text:
            break
        time.sleep(2)
    memory = [line for line in text.splitlines() if line.startswith("ray_stylefleet_gpu_memory_used_bytes{")]
    assert memory, "no GPU memory gauge exported"
    assert any('deployment="anime-b"' in line and float(line.rsplit(" ", 1)[1]) > 0 for line in memory), memory
    assert any(line.startswith("ray_stylefleet_gpu_utilization_ratio{") for line in text.splitlines())
