"""The application builder (``import_path: router.app:build_app``) and the ingress deployment."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.batching import ModelRequest, Reply
from deployments.kinds import KINDS
from deployments.onnx_session import RuntimeOptions
from deployments.serving import ModelServer
from router.api import create_api
from router.catalog import Catalog
from stylefleet.config import AppConfig, BatchingConfig, DeploymentConfig
from stylefleet.errors import ModelUnavailable, Overloaded

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class DeploymentState:
    status: str
    running_replicas: int


class ServeBackend:
    """The API's backend on a live cluster: deployment handles plus Serve's own status."""

    STATUS_CACHE_S = 1.0  # serve.status() is a controller round trip (~20 ms); probes can be frequent

    def __init__(self, handles: dict[str, DeploymentHandle], app_name: str) -> None:
        self._handles = handles
        self._app_name = app_name
        self._states: tuple[float, dict[str, DeploymentState]] = (float("-inf"), {})
        self._refresh = asyncio.Lock()

    async def run(self, deployment: str, request: ModelRequest) -> Reply:
        await self._check_serving(deployment)
        try:
            return await self._handles[deployment].remote(request)
        except BackPressureError as exc:
            raise Overloaded(
                f"the {deployment} deployment's queue is full (max_queued_requests); retry shortly",
                retry_after_s=max(1, math.ceil(exc.retry_after_s or 1)),
            ) from None
        except (ModelUnavailable, Overloaded):
            raise
        except Exception as exc:  # a replica died mid-request, or the deployment never started
            logger.warning("deployment %s failed a request: %r", deployment, exc)
            raise ModelUnavailable(f"the {deployment} deployment could not serve the request; retry shortly") from None

    async def _check_serving(self, deployment: str) -> None:
        """Answer at once for a deployment with no running replica (failed to start, or starting).

        Serve queues a request to such a deployment until a replica appears, which for a
        deployment whose model is missing is never: the client would wait out the HTTP timeout.
        """
        state = (await self._deployment_states()).get(deployment)
        if state is not None and state.running_replicas == 0 and state.status != "HEALTHY":
            raise ModelUnavailable(
                f"the {deployment} deployment has no running replica ({state.status}); its log says why "
                "(a missing model fails it at start)"
            )

    async def _deployment_states(self) -> dict[str, DeploymentState]:
        checked_at, states = self._states
        if time.monotonic() - checked_at < self.STATUS_CACHE_S:
            return states
        async with self._refresh:
            checked_at, states = self._states
            if time.monotonic() - checked_at < self.STATUS_CACHE_S:
                return states
            try:
                status = await asyncio.to_thread(serve.status)
            except Exception as exc:  # noqa: BLE001 - no status is no reason to refuse requests
                logger.warning("serve.status() failed: %r", exc)
                return states
            app = status.applications.get(self._app_name)
            states = {} if app is None else {
                name: DeploymentState(
                    status=str(getattr(d.status, "value", d.status)),
                    running_replicas=int(
                        sum(n for s, n in d.replica_states.items() if str(getattr(s, "value", s)) == "RUNNING")
                    ),
                )
                for name, d in app.deployments.items()
            }
            self._states = (time.monotonic(), states)
            return states

    async def health(self) -> dict[str, str]:
        return {name: state.status for name, state in (await self._deployment_states()).items()}


@serve.ingress()
class Router:
    """The ingress: parses HTTP, dispatches by style to the model deployments."""

    def __init__(self, config: AppConfig, handles: dict[str, DeploymentHandle]) -> None:
        self._config = config
        self._catalog = Catalog(config)
        self._backend = ServeBackend(handles, serve.get_replica_context().app_name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._catalog, self._backend, self._config.limits)


def model_deployment(name: str, dep: DeploymentConfig, config: AppConfig) -> Any:
    """One bound model deployment, with its batching as ``user_config`` (changeable live)."""
    kind = KINDS[dep.model]
    runtime = RuntimeOptions(device=dep.device, threads=dep.effective_threads)
    paths = {f: (config.models[f].path if f in config.models else None) for f in kind.files}
    sha256s = {f: (config.models[f].sha256 if f in config.models else None) for f in kind.files}
    options: dict[str, Any] = {}
    if dep.diffusion is not None:
        options = {"diffusion": dep.diffusion.model_dump(), "setting": f"deployments.{name}.diffusion"}
    return (
        serve.deployment(ModelServer)
        .options(
            name=name,
            num_replicas=dep.num_replicas,
            max_ongoing_requests=dep.max_ongoing_requests,
            max_queued_requests=dep.max_queued_requests,
            ray_actor_options={"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
            backpressure_config={"status_code": 503, "retry_after_s": 1},
            user_config=BatchingConfig().model_dump(),  # serve_config.yaml's deployments[] overrides it
        )
        .bind(dep.model, runtime, paths, config.model_dir, config.allow_download, sha256s, options)
    )


def build_app(args: AppConfig) -> Any:
    """Serve's app builder: validates the whole config (styles, params, batching) before deploying."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    Catalog(config)  # fixed style params are checked against their models here, at deploy time
    handles = {name: model_deployment(name, dep, config) for name, dep in config.deployments.items()}
    router = config.router
    return (
        serve.deployment(Router)
        .options(
            name="router",
            num_replicas=router.num_replicas,
            max_ongoing_requests=router.max_ongoing_requests,
            ray_actor_options={"num_cpus": router.num_cpus},
        )
        .bind(config, handles)
    )
