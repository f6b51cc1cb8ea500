"""A two-node Ray cluster on 127.0.0.1 (a head raylet and a worker raylet on this machine), the
app deployed across it, and what it does there, printed as one JSON line.

Run in its own process by ``test_multinode.py`` (one Ray per driver process: the session's
single-node Ray lives in the pytest process). Placement is KubeRay's: the head has no CPUs, so
no model replica can land there, and a ``head`` custom resource keeps the router beside the proxy;
the worker has CPUs and a ``models`` resource. Both nodes share the run's private token. Only
the processes this driver started are stopped (``Cluster.shutdown``), never another Ray.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from stylefleet.tools import local
from tests import samples
from tests.samples import ROOT

APP = "stylefleet"
LEASE_S = 90


def two_node_config(port: int, jobs_dir: str) -> dict[str, Any]:
    """The shipped config cut to the stylize deployment and its styles (oil-paint is the A/B
    one) and the router's splits and shadows to those styles, the router asking for the head's
    resource, one stylize replica on the worker."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    args = app["args"]
    args["deployments"] = {"stylize": copy.deepcopy(args["deployments"]["stylize"])}
    args["deployments"]["stylize"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    args["styles"] = {name: s for name, s in args["styles"].items() if _uses(s) == {"stylize"}}
    args["router"]["resources"] = {"head": 0.001}
    # a long lease: a job whose router is killed must resume because Ray says that router is dead
    args["jobs"].update(storage=jobs_dir, lease_timeout_s=LEASE_S, max_in_flight_per_job=2)
    app["deployments"] = [d for d in app["deployments"] if d["name"] in ("router", "stylize")]
    # the router's live traffic settings name styles too (spec.check_traffic's tables): keep those of the styles kept
    [router] = [d for d in app["deployments"] if d["name"] == "router"]
    traffic = router.get("user_config") or {}
    for table in (traffic.get("splits"), traffic.get("shadows"), traffic.get("gates", {}).get("styles")):
        for name in set(table or {}) - set(args["styles"]):
            del table[name]
    return config


def _uses(style: dict[str, Any]) -> set[str]:
    if "variants" in style:
        return {v["deployment"] for v in style["variants"]}
    return {style["deployment"]}


def _actor_nodes() -> dict[str, str]:
    """Serve replica actor name -> node id, for live actors (from the GCS; no dashboard)."""
    from ray._private import state

    return {
        a["Name"]: a["Address"]["NodeID"]
        for a in state.actors().values()
        if a["Name"].startswith("SERVE_REPLICA::") and a["State"] == "ALIVE"
    }


def _replica(deployment: str) -> str:
    [name] = [n for n in _actor_nodes() if n.startswith(f"SERVE_REPLICA::{APP}#{deployment}#")]
    return name


def main() -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    state_dir = Path(tempfile.mkdtemp(prefix="stylefleet-2node-"))
    jobs_dir = tempfile.mkdtemp(prefix="stylefleet-2node-jobs-")
    local.loopback_token_environment(state_dir)
    port = local.free_port()
    facts: dict[str, Any] = {}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "resources": {"head": 1}, "include_dashboard": False, "node_ip_address": local.LOOPBACK},
    )
    try:
        worker = cluster.add_node(num_cpus=2, resources={"models": 1}, node_ip_address=local.LOOPBACK)
        ray.init(address=cluster.address, namespace="serve", log_to_driver=False)
        facts["nodes"] = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        local.LocalCluster(state_dir=state_dir).deploy(two_node_config(port, jobs_dir), timeout_s=300)
        nodes = _actor_nodes()
        facts["router_on_head"] = nodes[_replica("router")] == head_id
        facts["stylize_on_worker"] = nodes[_replica("stylize")] == worker_id
        facts.update(asyncio.run(_requests(f"http://{local.LOOPBACK}:{port}")))
        facts["batch_sizes"] = serve.get_deployment_handle("stylize", APP).info.remote().result()["batch_sizes"]

        # kill the worker's replica: Serve starts another (on the worker again) and requests recover
        dead = _replica("stylize")
        ray.kill(ray.get_actor(dead, namespace="serve"), no_restart=True)
        started = time.monotonic()
        with httpx.Client(base_url=f"http://{local.LOOPBACK}:{port}", timeout=120) as client:
            r = client.post("/v1/styles/ink-wash", files={"image": ("c.png", samples.encoded(samples.cat()), "image/png")})
        facts["after_kill"] = {"status": r.status_code, "seconds": round(time.monotonic() - started, 1)}
        replacement = _replica("stylize")
        facts["replaced"] = replacement != dead and _actor_nodes()[replacement] == worker_id
        facts["router_death"] = _router_death(f"http://{local.LOOPBACK}:{port}")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(state_dir, ignore_errors=True)
            shutil.rmtree(jobs_dir, ignore_errors=True)
    return facts


def _router_death(url: str) -> dict[str, Any]:
    """Kill the router running a job: another router resumes it (before the lease would let it),
    and what GET shows never counts down."""
    import ray

    photo = samples.encoded(samples.astronaut())
    seen: list[int] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        files = [("images", (f"a{i}.png", photo, "image/png")) for i in range(16)]
        job = client.post("/v1/jobs", files=files, data={"style": "ink-wash"}).json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.append(client.get(f"/v1/jobs/{job['id']}").json()["done"])
            if seen[-1] >= 2:
                break
            time.sleep(0.2)
        ray.kill(ray.get_actor(_replica("router"), namespace="serve"), no_restart=True)
        killed = time.monotonic()
        status = ""
        while time.monotonic() < killed + LEASE_S + 60 and status not in ("succeeded", "failed", "canceled"):
            try:
                r = client.get(f"/v1/jobs/{job['id']}")
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 200:
                seen.append(r.json()["done"])
                status = r.json()["status"]
            time.sleep(0.2)
    return {"status": status, "seconds": round(time.monotonic() - killed, 1), "seen": seen}


async def _requests(url: str) -> dict[str, Any]:
    photo = samples.encoded(samples.cat(), "JPEG", quality=90)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        single = await client.post("/v1/styles/ink-wash", files={"image": ("c.jpg", photo, "image/jpeg")})
        burst = await asyncio.gather(
            *(client.post("/v1/styles/bold-blocks", files={"image": ("c.jpg", photo, "image/jpeg")}) for _ in range(8))
        )
        variants = [
            (
                await client.post(
                    "/v1/styles/oil-paint", files={"image": ("c.jpg", photo, "image/jpeg")}, headers={"X-Client-Id": f"user-{i}"}
                )
            )
            for i in range(12)
        ]
        job = (
            await client.post(
                "/v1/jobs",
                files=[("images", (f"p{i}.png", samples.encoded(samples.cat()[: 60 + i, :80]), "image/png")) for i in range(3)],
                data={"style": "ink-wash"},
            )
        ).json()
        state: dict[str, Any] = {}
        for _ in range(240):  # bounded: 120 s
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()
            if state["status"] in ("succeeded", "failed", "canceled"):
                break
            await asyncio.sleep(0.5)
        result = await client.get(f"/v1/jobs/{job['id']}/result")
        outputs = (
            sorted(n for n in zipfile.ZipFile(io.BytesIO(result.content)).namelist() if n.endswith(".png"))
            if result.status_code == 200
            else []
        )
        ready = await client.get("/healthz/ready")
    return {
        "single": single.status_code,
        "burst": [r.status_code for r in burst],
        "variants": sorted({r.headers.get("x-stylefleet-variant", "") for r in variants if r.status_code == 200}),
        "variant_statuses": sorted({r.status_code for r in variants}),
        "job": {"status": state.get("status"), "done": state.get("done"), "succeeded": state.get("succeeded"), "outputs": outputs},
        "ready": ready.status_code,
    }


if __name__ == "__main__":
    print("FACTS " + json.dumps(main()), flush=True)
    sys.exit(0)
