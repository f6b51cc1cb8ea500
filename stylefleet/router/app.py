"""The application builder (``import_path: stylefleet.router.app:build_app``) and the ingress deployment."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray._private import state as ray_state
from ray.serve.handle import DeploymentHandle

from stylefleet.config import AppConfig
from stylefleet.deployments.batching import ModelRequest, Reply
from stylefleet.deployments.log import serve_logger
from stylefleet.deployments.serve.serving import ComposedServer, ModelServer, call_deployment
from stylefleet.errors import ModelUnavailable
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.router.health import DeploymentState
from stylefleet.router.ingress import ignore_uvicorn_forwarded_headers, reuse_direct_ingress_port
from stylefleet.router.jobs.manager import JobManager
from stylefleet.router.metrics import RayRecorder
from stylefleet.spec import AppSpec
from stylefleet.storage import Storage

logger = serve_logger(__name__)


def serve_statuses(app_name: str) -> dict[str, str] | None:
    """Each deployment's Serve status alone (no replica counts), or None where it cannot be read.

    The controller answers it as a small protobuf (``get_serve_status``, what ``serve status``
    builds on); ``serve.status()`` instead builds and pickles every deployment's whole config,
    64 ms of the caller's CPU per read. The call is on Serve's controller client, which is not a
    public API: where this Ray lacks it, None, and the caller reads the whole status instead.
    """
    if not ray.is_initialized():  # never start a Ray to ask (the router always runs in one)
        return None
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return None
        overview = client.get_serve_status(app_name)
        return {d.name: str(getattr(d.status, "value", d.status)) for d in overview.deployment_statuses}
    except Exception as exc:  # noqa: BLE001 - the whole status is the fallback
        log = logger.debug if _status_read_failed else logger.warning
        log("reading the deployments' statuses failed, reading the whole status instead: %r", exc)
        _status_read_failed.append(exc)
        del _status_read_failed[:-1]
        return None


_status_read_failed: list[Exception] = []  # said once in the log, not every second


class ServeBackend:
    """The API's backend on a live cluster: deployment handles plus Serve's own status."""

    # Every STATUS_CACHE_S the router reads each deployment's status alone (``serve_statuses``,
    # cheap). Only when one changed, or a deployment has no running replica, or the replica counts
    # are FULL_STATUS_MAX_AGE_S old, does it read ``serve.status()`` (64 ms of CPU) for the counts.
    # A deployment that loses its last replica changes status, so it is refused within ~1 s.
    # Without the cheap read (another Ray), the whole status is read every STATUS_CACHE_HEALTHY_S
    # while all deployments run and every STATUS_CACHE_S while one waits for a replica.
    STATUS_CACHE_S = 1.0
    STATUS_CACHE_HEALTHY_S = 5.0
    FULL_STATUS_MAX_AGE_S = 30.0

    RETRY_DELAY_S = 0.2  # time for Serve's router to drop the dead replica before the retry
    STARTING = frozenset({"UPDATING", "UPSCALING"})  # Serve's statuses while replicas start
    STARTING_RETRY_AFTER_S = 10

    def __init__(self, handles: dict[str, DeploymentHandle], app_name: str, *, model_timeout_s: float = 100.0) -> None:
        self._handles = handles
        self._app_name = app_name
        self._model_timeout_s = model_timeout_s
        self._states: tuple[float, dict[str, DeploymentState]] = (float("-inf"), {})
        self._full_read_at = float("-inf")  # when the replica counts in _states were read
        self._refresh = asyncio.Lock()
        self.full_reads = 0  # how many times serve.status() was read

    async def run(self, deployment: str, request: ModelRequest) -> Reply:
        """One model call, retried once when the replica failed under it (it died mid-request).

        Model calls are idempotent: the same images and params (seeds included, the router picks
        them) give the same result, so running one again elsewhere is safe. Overloaded is not
        retried here: the client's Retry-After says when. The whole call, queueing included, is
        bounded by ``model_timeout_s``, so a deployment whose replicas never come back answers a
        JSON 503 before Serve's own request timeout would answer a plain-text 408.
        """
        await self._check_serving(deployment)
        try:
            return await asyncio.wait_for(self._call_retrying_once(deployment, request), self._model_timeout_s)
        except asyncio.TimeoutError:
            raise ModelUnavailable(
                f"the {deployment} deployment did not answer within {self._model_timeout_s:g} s "
                "(router.model_timeout_s); retry shortly",
                retry_after_s=5,
            ) from None

    async def _call_retrying_once(self, deployment: str, request: ModelRequest) -> Reply:
        try:
            return await call_deployment(self._handles[deployment], deployment, request)
        except ModelUnavailable as first:
            logger.warning("retrying a %s call once on another replica: %s", deployment, first.message)
        await asyncio.sleep(self.RETRY_DELAY_S)
        return await call_deployment(self._handles[deployment], deployment, request)

    async def _check_serving(self, deployment: str) -> None:
        """Answer at once for a deployment with no running replica (failed to start, or starting).

        Serve queues a request to such a deployment until a replica appears, which for a
        deployment whose model is missing is never: the client would wait out the HTTP timeout.
        """
        state = (await self._deployment_states()).get(deployment)
        if state is None or state.running_replicas > 0 or state.status == "HEALTHY":
            return
        if state.status in self.STARTING:
            # Loading and warming up takes 20-45 s on 2 cores (onnx_session.warm): a client that
            # honours Retry-After (a job's items, `stylefleet batch`) waits it out instead of
            # spending its retries in the first seconds.
            raise ModelUnavailable(
                f"the {deployment} deployment has no running replica yet ({state.status}: its replicas are "
                "starting, loading and warming up; a missing model fails it at start, its log says why)",
                retry_after_s=self.STARTING_RETRY_AFTER_S,
            )
        raise ModelUnavailable(
            f"the {deployment} deployment has no running replica ({state.status}); its log says why "
            "(a missing model fails it at start)"
        )

    def _fresh(self) -> bool:
        return time.monotonic() - self._states[0] < self.STATUS_CACHE_S

    async def _deployment_states(self) -> dict[str, DeploymentState]:
        if self._fresh():
            return self._states[1]
        async with self._refresh:
            if self._fresh():
                return self._states[1]
            states = self._states[1]
            statuses = await asyncio.to_thread(serve_statuses, self._app_name)
            if not self._counts_still_hold(states, statuses):
                states = await self._read_whole_status(states)
            self._states = (time.monotonic(), states)
            return states

    def _counts_still_hold(self, states: dict[str, DeploymentState], statuses: dict[str, str] | None) -> bool:
        """Whether the replica counts last read still describe the deployments."""
        if not states or any(s.running_replicas == 0 for s in states.values()):
            return False  # waiting for a replica: read the counts each time
        age = time.monotonic() - self._full_read_at
        if statuses is None:
            return age < self.STATUS_CACHE_HEALTHY_S
        return age < self.FULL_STATUS_MAX_AGE_S and statuses == {name: s.status for name, s in states.items()}

    async def _read_whole_status(self, states: dict[str, DeploymentState]) -> dict[str, DeploymentState]:
        """Each deployment's status and running replicas from ``serve.status()``; ``states`` if it fails."""
        try:
            status = await asyncio.to_thread(serve.status)
        except Exception as exc:  # noqa: BLE001 - no status is no reason to refuse requests
            logger.warning("serve.status() failed: %r", exc)
            return states
        self.full_reads += 1
        self._full_read_at = time.monotonic()
        app = status.applications.get(self._app_name)
        return {} if app is None else {
            name: DeploymentState(
                status=str(getattr(d.status, "value", d.status)),
                running_replicas=int(
                    sum(n for s, n in d.replica_states.items() if str(getattr(s, "value", s)) == "RUNNING")
                ),
            )
            for name, d in app.deployments.items()
        }

    async def health(self) -> dict[str, DeploymentState]:
        return await self._deployment_states()


def actor_alive(actor_id: str) -> bool | None:
    """Whether a Ray actor still lives, from the GCS (no dashboard needed); None when unknown.
    A job's lease names its router's actor: a dead one's jobs are resumed at once."""
    info = ray_state.actors(actor_id=actor_id)
    state = info.get("State") if isinstance(info, dict) else None
    if state is None:
        return None
    return str(state) != "DEAD"


@serve.ingress()
class Router:
    """The ingress: parses HTTP, picks the variant, dispatches to the model deployments.

    Its ``user_config`` is ``RouterSettings`` (A/B weights, shadow shares): changing it reaches
    the running router through ``reconfigure``, without restarting any replica.
    """

    def __init__(self, spec: AppSpec, handles: dict[str, DeploymentHandle]) -> None:
        reuse_direct_ingress_port()  # before Serve starts this replica's own HTTP server, after __init__
        ignore_uvicorn_forwarded_headers()  # the client address is limits.trusted_proxies' to resolve
        self._spec = spec
        config = spec.args
        backend = ServeBackend(handles, serve.get_replica_context().app_name, model_timeout_s=config.router.model_timeout_s)
        self.core = RouterCore(Catalog(spec), backend, max_pixels=config.limits.max_pixels, recorder=RayRecorder())
        self.core.describe_styles()  # each style's description is built once, here, not on the first GET /v1/styles
        self.jobs = JobManager(
            self.core,
            Storage(config.jobs.storage),
            config.jobs,
            max_item_bytes=config.limits.max_upload_bytes,
            actor_id=ray.get_runtime_context().get_actor_id(),
            owner_alive=actor_alive,
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
        self.core.apply(self._spec.traffic_settings(user_config))
        logger.info("traffic now %s (shadows %s)", self.core.traffic.weights, self.core.traffic.shadows)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.core, self._spec.args.limits, jobs=self.jobs)


def model_deployment(name: str, spec: AppSpec, bound: dict[str, Any]) -> Any:
    """One bound deployment, with its batching as ``user_config`` (changeable live).

    A composed kind gets, for each role, the already bound deployment the config names in
    ``uses``; Serve turns it into a handle in the replica. ``bound`` must hold those. Either
    server builds its model from the deployment's ``ModelSpec`` (``stylefleet.deployments.loader``).
    """
    dep = spec.deployments[name]
    server: type[Any]
    init_args: tuple[Any, ...]
    if spec.kind_of(name).composed:
        handles = {role: bound[target] for role, target in dep.uses.items()}
        server, init_args = ComposedServer, (spec.model_spec(name), handles)
    else:
        server, init_args = ModelServer, (spec.model_spec(name),)
    return (
        serve.deployment(server)  # type: ignore[attr-defined]  # Ray's overloads pick the keyword form
        .options(
            name=name,
            autoscaling_config=dep.autoscaling.to_serve(),
            max_ongoing_requests=dep.max_ongoing_requests,
            max_queued_requests=dep.max_queued_requests,
            ray_actor_options=actor_options(name, spec),
            backpressure_config={"status_code": 503, "retry_after_s": 1},
            user_config=spec.batching_of(name).model_dump(),  # serve_config.yaml's deployments[] overrides it
        )
        .bind(*init_args)
    )


def actor_options(name: str, spec: AppSpec) -> dict[str, Any]:
    """A model replica's Ray actor options: its CPU and GPU shares, and its memory budget as
    Ray's ``memory`` resource, so Ray places no more replicas on a node than its memory holds."""
    dep = spec.deployments[name]
    options: dict[str, Any] = {"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus}
    budget = spec.memory_budget_of(name)
    if budget is not None:
        options["memory"] = budget
    return options


def build_app(args: AppConfig | AppSpec | dict[str, Any]) -> Any:
    """Serve's app builder: the app spec checks the whole config (styles, params, uses, batching)
    before anything is deployed."""
    spec = args if isinstance(args, AppSpec) else AppSpec.from_args(args)
    spec = spec.model_copy(update={"args": absolute_storage(spec.args)})
    handles: dict[str, Any] = {}
    for name in spec.order():  # a used deployment is bound before its users
        handles[name] = model_deployment(name, spec, handles)
    router = spec.args.router
    return (
        serve.deployment(Router)  # type: ignore[attr-defined]  # Ray's overloads pick the keyword form
        .options(
            name="router",
            num_replicas=router.num_replicas,
            max_ongoing_requests=router.max_ongoing_requests,
            ray_actor_options={"num_cpus": router.num_cpus, **({"resources": router.resources} if router.resources else {})},
            user_config=spec.traffic.model_dump(),  # serve_config.yaml's deployments[] overrides it
        )
        .bind(spec, handles)
    )


def absolute_storage(config: AppConfig) -> AppConfig:
    """A relative jobs.storage folder is taken from where the app is built, so every replica
    (whatever its working directory) finds the same folder."""
    storage = config.jobs.storage
    if "://" in storage or os.path.isabs(storage):
        return config
    jobs = config.jobs.model_copy(update={"storage": os.path.abspath(storage)})
    return config.model_copy(update={"jobs": jobs})
