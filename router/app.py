"""The application builder (``import_path: router.app:build_app``) and the ingress deployment."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.batching import ModelRequest, Reply
from deployments.kinds import KINDS
from deployments.onnx_session import RuntimeOptions
from deployments.serving import ComposedServer, ModelServer, call_deployment
from router.api import create_api
from router.catalog import Catalog
from router.core import RouterCore
from router.jobs import JobManager
from router.metrics import RayRecorder
from stylefleet.config import AppConfig, BatchingConfig, DeploymentConfig, RouterSettings, dependency_order
from stylefleet.storage import Storage

logger = logging.getLogger("ray.serve")


class ServeBackend:
    """The API's backend on a live cluster: deployment handles plus Serve's own status."""

    HEALTH_CACHE_S = 1.0  # serve.status() is a controller round trip (~20 ms); probes can be frequent

    def __init__(self, handles: dict[str, DeploymentHandle], app_name: str) -> None:
        self._handles = handles
        self._app_name = app_name
        self._health: tuple[float, dict[str, str]] = (0.0, {})

    async def run(self, deployment: str, request: ModelRequest) -> Reply:
        return await call_deployment(self._handles[deployment], deployment, request)

    async def health(self) -> dict[str, str]:
        checked_at, cached = self._health
        if time.monotonic() - checked_at < self.HEALTH_CACHE_S:
            return cached
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self._app_name)
        statuses = {} if app is None else {
            name: str(getattr(d.status, "value", d.status)) for name, d in app.deployments.items()
        }
        self._health = (time.monotonic(), statuses)
        return statuses


@serve.ingress()
class Router:
    """The ingress: parses HTTP, picks the variant, dispatches to the model deployments.

    Its ``user_config`` is ``RouterSettings`` (A/B weights, shadow shares): changing it reaches
    the running router through ``reconfigure``, without restarting any replica.
    """

    def __init__(self, config: AppConfig, handles: dict[str, DeploymentHandle]) -> None:
        self._config = config
        backend = ServeBackend(handles, serve.get_replica_context().app_name)
        self.core = RouterCore(Catalog(config), backend, max_pixels=config.limits.max_pixels, recorder=RayRecorder())
        self.jobs = JobManager(
            self.core, Storage(config.jobs.storage), config.jobs, max_item_bytes=config.limits.max_upload_bytes
        )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop here: the first /v1/jobs request starts the scheduler
        else:
            self.jobs.ensure_started()  # resume unfinished jobs now, without waiting for a request

    def __del__(self) -> None:
        """Serve's graceful shutdown: stop this replica's jobs and release their leases, so the
        next replica resumes them at once (items in flight are redone there, none twice)."""
        jobs = getattr(self, "jobs", None)
        if jobs is not None:
            jobs.stop()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.core.apply(RouterSettings.model_validate(user_config or {}))
        logger.info("traffic now %s (shadows %s)", self.core.traffic.weights, self.core.traffic.shadows)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.core, self._config.limits, jobs=self.jobs)


def model_deployment(name: str, dep: DeploymentConfig, config: AppConfig, bound: dict[str, Any]) -> Any:
    """One bound deployment, with its batching as ``user_config`` (changeable live).

    A composed kind gets, for each role, the already bound deployment the config names in
    ``uses``; Serve turns it into a handle in the replica. ``bound`` must hold those.
    """
    kind = KINDS[dep.model]
    server: type[Any]
    init_args: tuple[Any, ...]
    if kind.composed:
        handles = {role: bound[target] for role, target in dep.uses.items()}
        checksum = "+".join(KINDS[config.deployments[t].model].expected_sha256() for t in dep.uses.values())
        server, init_args = ComposedServer, (dep.model, handles, dict(dep.uses), checksum)
    else:
        runtime = RuntimeOptions(device=dep.device, threads=dep.effective_threads)
        paths = {f: (config.models[f].path if f in config.models else None) for f in kind.files}
        server, init_args = ModelServer, (dep.model, runtime, paths, config.model_dir, config.allow_download, dep.num_gpus)
    return (
        serve.deployment(server)
        .options(
            name=name,
            autoscaling_config=dep.autoscaling.to_serve(),
            max_ongoing_requests=dep.max_ongoing_requests,
            max_queued_requests=dep.max_queued_requests,
            ray_actor_options={"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
            backpressure_config={"status_code": 503, "retry_after_s": 1},
            user_config=BatchingConfig().model_dump(),  # serve_config.yaml's deployments[] overrides it
        )
        .bind(*init_args)
    )


def build_app(args: AppConfig) -> Any:
    """Serve's app builder: validates the whole config (styles, params, batching) before deploying."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    config = absolute_storage(config)
    Catalog(config)  # fixed style params are checked against their models here, at deploy time
    handles: dict[str, Any] = {}
    for name in dependency_order(config.deployments):  # a used deployment is bound before its users
        handles[name] = model_deployment(name, config.deployments[name], config, handles)
    router = config.router
    return (
        serve.deployment(Router)
        .options(
            name="router",
            num_replicas=router.num_replicas,
            max_ongoing_requests=router.max_ongoing_requests,
            ray_actor_options={"num_cpus": router.num_cpus},
            user_config=RouterSettings().model_dump(),  # serve_config.yaml's deployments[] overrides it
        )
        .bind(config, handles)
    )


def absolute_storage(config: AppConfig) -> AppConfig:
    """A relative jobs.storage folder is taken from where the app is built, so every replica
    (whatever its working directory) finds the same folder."""
    storage = config.jobs.storage
    if "://" in storage or os.path.isabs(storage):
        return config
    jobs = config.jobs.model_copy(update={"storage": os.path.abspath(storage)})
    return config.model_copy(update={"jobs": jobs})
