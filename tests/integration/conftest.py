"""Integration tier: one real local Ray Serve on 127.0.0.1 per test session, real HTTP, real models."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stylefleet.tools import local
from tests import genai_models
from tests.samples import ROOT

APP = "stylefleet"
MEMORY_RESOURCE_BYTES = 24 * 1024**3


# A cutout style with variants on one deployment, for the shadow gate (test_ab): "same" gives the
# primary's matte, "eroded" one shrunk by 2 px.
CUTOUT_AB = {
    "description": "cutout A/B",
    "variants": [
        {"name": "a", "deployment": "remove-background", "params": {"erode_px": 0}},
        {"name": "same", "deployment": "remove-background", "params": {"erode_px": 0}},
        {"name": "eroded", "deployment": "remove-background", "params": {"erode_px": 2}},
    ],
}


def test_config(port: int) -> dict[str, Any]:
    """The shipped serve_config.yaml, with what the tests need changed and nothing else.

    - its own port, so a developer's `make run` on 8000 does not collide;
    - the restyle deployment bounded tightly (one request at a time, one queued) so the
      tests can provoke 503 overloaded without flooding the machine;
    - a small upload limit so 413 is cheap to provoke;
    - remove-background with two calls at once and a two-thread lone-call session, whatever
      the machine's cores (test_batching);
    - stylize pinned to one replica (tests compare replica ids), and a small extra deployment
      with quick autoscaling (1-2 replicas, one thread each, a 2 GiB memory budget each) for the
      scaling test;
    - a remove-background style with three variants (``CUTOUT_AB``) for the shadow gate;
    - jobs in a fresh temporary folder, a short lease (a restarted app resumes quickly), two items
      in flight per job, and a 16 MiB archive limit so a zip bomb is cheap to build.
    """
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    args = app["args"]
    args["limits"]["max_upload_bytes"] = 4 * 1024 * 1024
    args["jobs"].update(
        storage=tempfile.mkdtemp(prefix="stylefleet-jobs-"),
        lease_timeout_s=5,
        max_in_flight_per_job=2,
        max_archive_uncompressed_bytes=16 * 1024 * 1024,
    )
    restyle = args["deployments"]["restyle"]
    restyle.update(max_ongoing_requests=8, max_queued_requests=1)
    restyle["autoscaling"] = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4}
    args["deployments"]["stylize"]["autoscaling"]["max_replicas"] = 1
    # One network call at a time, so a single large photo makes the model busy (test_batching).
    args["deployments"]["stylize"]["model_calls"] = 1
    # Two calls at once, so the lone-call session has two threads on any machine of 2 cores or more.
    args["deployments"]["remove-background"].update(model_calls=2)
    args["deployments"]["autoscale-probe"] = {
        "model": "multistyle26",
        "num_cpus": 0.25,
        "threads": 1,
        "max_ongoing_requests": 8,
        "memory_budget_bytes": 2 * 1024**3,  # idles near 1 GiB (3 sessions warmed for batches of 2)
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
        },
    }
    args["styles"]["autoscale-probe"] = {"deployment": "autoscale-probe", "params": {"style": "3"}}
    args["styles"]["cutout-ab"] = CUTOUT_AB
    for entry in app["deployments"]:
        if entry["name"] == "restyle":
            entry["user_config"] = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
    # Small batches: a replica warms every batch size at start (onnx_session.warm), and the
    # scaling test's second replica starts while the first is under load.
    app["deployments"].append({"name": "autoscale-probe", "user_config": {"max_batch_size": 2, "batch_wait_timeout_s": 0.0}})
    return config


@pytest.fixture(scope="session")
def serve_app() -> Iterator[dict[str, Any]]:
    port = local.free_port()
    config = test_config(port)
    state_dir = Path(tempfile.mkdtemp(prefix="stylefleet-test-state-"))
    # As `stylefleet run` has it: the router replica answers on the port itself (direct ingress),
    # Serve's proxy on another loopback port serves every application, the ones added later too
    # (room for their own ingress replicas' ports: ingress_ports).
    cluster = local.LocalCluster(
        state_dir=state_dir,  # its own, removed below (LocalCluster's default one is left behind)
        http_port=port,
        ingress="direct",
        ingress_ports=8,
        include_dashboard=True,  # as `stylefleet run` has it, so its auth and sockets are tested too
        dashboard_port=local.free_port(),
        metrics_export_port=local.free_port(),
        num_cpus=3,  # logical CPUs for scheduling: room for the scaling test's second replica
        # Ray's memory resource, which places the replicas' memory budgets: fixed, as on the
        # machine the shipped config is sized for, not 70% of what a shared test machine has free.
        memory_bytes=MEMORY_RESOURCE_BYTES,
        temp_dir=os.environ.get("STYLEFLEET_TEST_RAY_TMP"),
    )
    cluster.start()
    session: dict[str, Any] = {"config": config}
    try:
        cluster.deploy(config, timeout_s=300)
        session = {
            "url": f"http://127.0.0.1:{port}",
            "proxy_url": f"http://127.0.0.1:{cluster.proxy_port}",  # Serve's proxy: every application
            "metrics_url": f"http://127.0.0.1:{cluster.metrics_export_port}/metrics",
            "config": copy.deepcopy(config),
            "cluster": cluster,
        }
        yield session
    finally:
        cluster.stop()
        # every application's jobs folder, those the session added (genai_app) too
        for app in [*config["applications"], *session["config"]["applications"]]:
            shutil.rmtree(app["args"]["jobs"]["storage"], ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def base_url(serve_app: dict[str, Any]) -> str:
    return serve_app["url"]


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def redeploy(serve_app: dict[str, Any], user_configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Re-apply the session's config with only these deployments' user_config changed
    (a lightweight update: running replicas get reconfigure(), nothing restarts)."""
    config = copy.deepcopy(serve_app["config"])
    for entry in config["applications"][0]["deployments"]:
        if entry["name"] in user_configs:
            entry["user_config"] = user_configs[entry["name"]]
    serve_app["cluster"].deploy(config, timeout_s=120)
    return config


def router_settings(serve_app: dict[str, Any], *, splits: dict[str, Any], shadows: dict[str, Any]) -> dict[str, Any]:
    """The session's router user_config with these styles' splits and shadows replaced, the
    others kept (remove-background's split keeps its int8 variant a shadow, as the gate wants)."""
    entry = next(d for d in serve_app["config"]["applications"][0]["deployments"] if d["name"] == "router")
    shipped = copy.deepcopy(entry["user_config"])
    return {"splits": {**shipped["splits"], **splits}, "shadows": {**shipped["shadows"], **shadows}}


def deployment_info(deployment: str) -> dict[str, Any]:
    from ray import serve

    return serve.get_deployment_handle(deployment, APP).info.remote().result()


GENAI_APP = "genai"


def genai_application(
    models_dir: Path, *, name: str = GENAI_APP, route_prefix: str = "/genai", sd_model: str | None = None
) -> dict[str, Any]:
    """A second application with tiny generative models: the four kinds of style, batched and seeded."""
    base, controlnet = genai_models.build_tiny_sd(models_dir)
    anime_sha256 = genai_models.save_animegan(models_dir / "paprika.pt")
    tiny = {"width": 64, "height": 64, "guidance_scale": 5.0, "min_steps": 1, "max_steps": 4}
    small = {"num_cpus": 0.1, "threads": 1, "max_ongoing_requests": 16, "max_queued_requests": 64}
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "stylefleet.router.app:build_app",
        "args": {
            "limits": {"max_images_per_request": 4},
            # its own jobs folder: never the repo's .stylefleet/jobs, nor the default app's; in
            # pytest's temporary tree beside the models, which pytest clears, not in the temp dir
            "jobs": {"storage": tempfile.mkdtemp(prefix=f"{name}-jobs-", dir=models_dir.parent)},
            "models": {"animeganv2_paprika": {"path": str(models_dir / "paprika.pt"), "sha256": anime_sha256}},
            "deployments": {
                "diffusion": {
                    "model": "stable-diffusion",
                    **small,
                    "diffusion": {"model": sd_model or str(base), "controlnet": str(controlnet)},
                },
                "anime": {"model": "animeganv2_paprika", **small},
            },
            "styles": {
                "tiny-t2i": {
                    "deployment": "diffusion",
                    "params": {"pipeline": "text-to-image", "prompt_template": "a photo of {prompt}", **tiny},
                    "defaults": {"prompt": "a red bicycle", "seed": 1234, "steps": 2},
                },
                "tiny-t2i-wide": {
                    "deployment": "diffusion",
                    "params": {"pipeline": "text-to-image", **tiny, "width": 96},
                    "defaults": {"prompt": "a lighthouse", "seed": 5, "steps": 2},
                },
                "tiny-img2img": {
                    "deployment": "diffusion",
                    "params": {"pipeline": "img2img", "strength": 0.6, **tiny},
                    "defaults": {"prompt": "a watercolour", "seed": 42, "steps": 2},
                },
                "tiny-controlnet": {
                    "deployment": "diffusion",
                    "params": {"pipeline": "controlnet-canny", **tiny},
                    "defaults": {"prompt": "a product", "seed": 99, "steps": 2},
                },
                "tiny-anime": {"deployment": "anime"},
            },
        },
        "deployments": [
            {"name": "diffusion", "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}},
            {"name": "anime", "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}},
        ],
    }


@pytest.fixture(scope="session")
def genai_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("genai-models")


@pytest.fixture(scope="session")
def genai_app(serve_app: dict[str, Any], genai_models_dir: Path) -> dict[str, Any]:
    """Adds the generative application beside the default one (deploy_apps replaces the set, so
    both go together) and keeps it in the session's config, so later redeploys keep it too."""
    config = serve_app["config"]
    if not any(app["name"] == GENAI_APP for app in config["applications"]):
        config["applications"].append(genai_application(genai_models_dir))
        serve_app["cluster"].deploy(config, timeout_s=300)
    return {"url": f"{serve_app['proxy_url']}/genai", "models_dir": genai_models_dir}
