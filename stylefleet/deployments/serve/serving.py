"""The Ray Serve wrappers around a model: they queue (a ``BatchQueue``, ``stylefleet.deployments.queue``:
by default the next batch is the backlog when the model is free, under a pixel budget), move compute off the event loop, and
record their figures (batch size, time queued before the batch ran, model load time, and on a
GPU the utilisation and memory in use).

``ModelServer`` serves every kind that loads weights; ``ComposedServer`` serves the composed
kinds (``id-photo``), which call other deployments through handles. The app builder deploys one
of them per configured deployment (``.options(name=...)``), so each has its own replicas and
batch queue.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from stylefleet.config import BatchingConfig, ModelSpec, QueueKind
from stylefleet.deployments.admission import MemoryAdmission
from stylefleet.deployments.batching import (
    ModelRequest,
    Outcome,
    Reply,
    encode_outcomes,
    infer_prepared,
    prepare_one,
    request_footprint,
    request_pixels,
)
from stylefleet.deployments.capabilities import Describing, MemoryLimited, WarmsUp, Weighing
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.kinds import KINDS, ModelKind
from stylefleet.deployments.loader import load_model, model_calls
from stylefleet.deployments.log import serve_logger
from stylefleet.deployments.memory import BatchLimiter
from stylefleet.deployments.onnx_session import running_alone
from stylefleet.deployments.queue import BacklogQueue, BatchQueue, QueueLimits, runs_alone
from stylefleet.deployments.serve.batch_queue import ServeBatchQueue
from stylefleet.deployments.serve.metrics import GpuSampler, ReplicaMetrics
from stylefleet.errors import ModelUnavailable, Overloaded, StylefleetError

logger = serve_logger(__name__)

T = TypeVar("T")

# How each ``queue:`` builds a replica's BatchQueue from its batch function and limits.
QUEUES: dict[QueueKind, Callable[..., BatchQueue[Any, Any]]] = {"backlog": BacklogQueue, "serve-batch": ServeBatchQueue}


@dataclass
class _Queued:
    """A request waiting in a replica's batch queue, with its arrival time and batch weights."""

    arrived: float  # time.monotonic() when it reached the replica (queue-time metrics)
    request: ModelRequest
    cost: int  # weight against max_batch_size: 1, or what the model's weigh() says
    pixels: int  # weight against the pixel budget
    prepared: Any = None  # ModelServer: the request already decoded and prepared


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def rss_peak_bytes() -> int:
    """This process's high-water RSS since it started (the kernel's, so no peak is missed)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


async def call_deployment(handle: DeploymentHandle, deployment: str, request: ModelRequest) -> Reply:
    """One request to a deployment; Serve's failures become the API's typed errors."""
    try:
        return await handle.remote(request)
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


class _Batched:
    """What both servers share: the batch queue, live batching through ``reconfigure``, counters.

    Requests go through one ``BatchQueue``: ``BacklogQueue`` (``queue: backlog``, the default) or
    ``ServeBatchQueue`` over Ray Serve's ``@serve.batch`` (``queue: serve-batch``, kept to compare
    them side by side); either calls ``_run_items`` with each batch. Only ``reconfigure`` looks at
    which: it picks the replica's queue of that kind, built on first use and then kept, so a live
    switch leaves what the other one holds to finish there.
    """

    concurrent_batches = 1

    def __init__(self, kind: ModelKind, *, gpu: bool = False) -> None:
        self.kind = kind
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran
        self.compute_seconds = 0.0  # time inside batches (the benchmark's per-stage shares)
        self.metrics = ReplicaMetrics(gpu=gpu)
        self.batching = BatchingConfig()
        self._queues: dict[QueueKind, BatchQueue[_Queued, Any]] = {}
        self._queue = self._queue_of(self.batching.queue)
        self.rss_start_bytes = rss_bytes()
        self.model: Any = None

    @property
    def pixel_budget(self) -> int | None:
        return self.batching.max_batch_pixels or self.kind.max_batch_pixels

    def _queue_limits(self) -> QueueLimits:
        return QueueLimits(
            max_batch_size=self.batching.max_batch_size,
            max_batch_pixels=self.pixel_budget,
            batch_wait_timeout_s=self.batching.batch_wait_timeout_s,
            max_concurrent_batches=self.concurrent_batches,
        )

    def _queue_of(self, kind: QueueKind) -> BatchQueue[_Queued, Any]:
        if kind not in self._queues:
            self._queues[kind] = QUEUES[kind](self._run_items, self._queue_limits())
        return self._queues[kind]

    @property
    def queued(self) -> int:
        """Requests waiting for their batch to start, in whichever queue holds them."""
        return sum(queue.queued for queue in self._queues.values())

    @property
    def running_batches(self) -> int:
        return sum(queue.running for queue in self._queues.values())

    def _batch_started(self, items: list[_Queued]) -> list[ModelRequest]:
        """Count the batch, record how long each request queued; return the requests."""
        now = time.monotonic()
        self.batch_sizes[len(items)] += 1
        self.metrics.batch_started(len(items), [now - item.arrived for item in items])
        return [item.request for item in items]

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (a BatchingConfig) at run time, without restarting the replica.

        A bad value raises here, which fails the deploy with the field named in the message.
        """
        config = BatchingConfig.model_validate(user_config)
        config.check_fits(self._max_ongoing_requests())
        self.batching = config
        self._queue = self._queue_of(config.queue)
        self._queue.configure(self._queue_limits())
        logger.info("batching now %s (pixel budget %s)", config.model_dump(), self.pixel_budget)

    async def __call__(self, request: ModelRequest) -> Reply:
        """One request in, its own result or its own error out (never a batch mate's).

        A bad file or param is answered here, from the upload's header, before it queues. A
        model that weighs requests (Stable Diffusion: pixels x steps) fills max_batch_size by
        weight; every other model weighs 1 per request.
        """
        try:
            pixels, cost = self._weigh(request)
        except StylefleetError as exc:
            return exc
        return await self._enqueue(_Queued(time.monotonic(), request, cost, pixels))

    def _weigh(self, request: ModelRequest) -> tuple[int, int]:
        """(pixels against the budget, weight against max_batch_size), from the upload's header;
        a bad file or param raises its typed error."""
        return request_pixels(self.model, request), self._cost(request)

    def _cost(self, request: ModelRequest) -> int:
        return self.model.weigh(request) if isinstance(self.model, Weighing) else 1

    async def _enqueue(self, item: _Queued) -> Any:
        return await self._queue.submit(item, pixels=item.pixels, size=item.cost)

    async def _run_items(self, items: list[_Queued]) -> list[Reply]:
        raise NotImplementedError

    @staticmethod
    def _max_ongoing_requests() -> int:
        # Serve keeps the live deployment config on the replica context (a private field).
        config = getattr(serve.get_replica_context(), "_deployment_config", None)
        return int(getattr(config, "max_ongoing_requests", 1 << 30))

    def _batch_info(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.batching.max_batch_size,
            "batch_wait_timeout_s": self.batching.batch_wait_timeout_s,
            "max_batch_pixels": self.pixel_budget,
            "queue": self.batching.queue,
            "batch_sizes": dict(self.batch_sizes),
            "queued": self.queued,
            "running_batches": self.running_batches,
            "compute_seconds": round(self.compute_seconds, 4),
            "replica": serve.get_replica_context().replica_tag,
            "pid": os.getpid(),
            "rss_start_bytes": self.rss_start_bytes,
            "rss_bytes": rss_bytes(),
            "rss_peak_bytes": rss_peak_bytes(),
        }


class ModelServer(_Batched):
    """Loads one model at start (a missing or corrupt file fails the replica with a clear message).

    A request first reserves its estimated memory (``memory_budget_bytes``; it waits, first in
    first out, while the replica's admitted requests fill it), is then decoded and prepared in a
    worker thread, queues prepared, runs its network call (and ``finish``) in a batch, and is
    encoded in a worker thread after its batch: pre/post-processing overlaps the network calls instead of adding to them. Up to
    ``model_calls`` batches run their network at once, each on ``threads`` threads: several
    one-thread calls use the cores better than one call on several threads (README
    "Performance"), and no more run than the cores were sized for.
    """

    def __init__(self, spec: ModelSpec) -> None:
        kind = KINDS[spec.model]
        self.concurrent_batches = model_calls(spec)
        self._in_flight = 0  # batches in their network call now (either queue)
        self.lone_batches = 0  # batches run alone on the lone-call threads (info())
        loaded = load_model(spec)
        self.lone_call_threads = loaded.runtime.lone_call_threads
        nvml = loaded.nvml
        super().__init__(kind, gpu=nvml is not None)
        self.model = loaded.model
        self.model_sha256 = loaded.model_sha256
        self.load_seconds = loaded.load_seconds
        self._limiter: BatchLimiter | None = self.model.limiter if isinstance(self.model, MemoryLimited) else None
        self.gpu_memory_cap_bytes = loaded.gpu_memory_cap_bytes
        self._memory_metrics = _MemoryMetrics() if self._limiter is not None else None
        self.metrics.model_loaded(self.kind.name, self.load_seconds)
        pid = os.getpid()
        self.gpu_sampler = GpuSampler(self.metrics, lambda: nvml.read(pid)) if nvml is not None else None
        self.rss_start_bytes = rss_bytes()
        self.warm_up_seconds: float | None = None  # None: not warmed (yet, or a model that does not)
        self.rss_warmed_bytes: int | None = None
        self.memory_budget_bytes = spec.memory_budget_bytes or kind.memory_budget_bytes
        self._memory_max_waiting = spec.memory_max_waiting
        self._admission: MemoryAdmission | None = None  # set once the idle footprint is known (reconfigure)
        self._seconds_lock = threading.Lock()
        logger.info("loaded %s (%s) in %.2fs", kind.name, self.model_sha256[:12], self.load_seconds)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching as in ``_Batched``, plus the memory limiter's configured size."""
        super().reconfigure(user_config)
        if self._limiter is not None:
            self._limiter.configured = self.batching.max_batch_size
            self._record_memory()
        if self.warm_up_seconds is None and isinstance(self.model, WarmsUp):
            self._warm_up()
        if self._admission is None:
            self._admission = self._memory_admission()

    def _memory_admission(self) -> MemoryAdmission | None:
        """The replica's admission by memory (``stylefleet.deployments.admission``): its budget less
        its idle footprint, read once loaded and warmed up (before any request). None for a kind
        whose memory per pixel is not known, or with no budget."""
        if self.kind.memory is None or self.memory_budget_bytes is None:
            return None
        idle = rss_bytes()
        room = self.memory_budget_bytes - idle
        if room <= 0:
            raise ValueError(
                f"memory_budget_bytes ({self.memory_budget_bytes}) is not above this replica's memory once "
                f"loaded and warmed up ({idle} bytes RSS): raise it, it must also hold the requests"
            )
        logger.info(
            "memory budget %d MiB: %d MiB idle, %d MiB for requests", self.memory_budget_bytes >> 20, idle >> 20, room >> 20
        )
        return MemoryAdmission(room, max_waiting=self._memory_max_waiting, retry_after_s=2)

    def _warm_up(self) -> None:
        """Once, at start (Serve applies ``user_config`` before the replica takes requests): each
        batch size the queue may form, so the arena's pages are touched now and RSS stays flat
        under load. A later ``reconfigure`` that raises max_batch_size does not warm again:
        the new sizes are planned when they first run."""
        assert isinstance(self.model, WarmsUp)
        started = time.perf_counter()
        self.model.warm_up(self.batching.max_batch_size, self.pixel_budget)
        self.warm_up_seconds = time.perf_counter() - started
        self.rss_warmed_bytes = rss_bytes()
        logger.info(
            "warmed batches of 1-%d in %.1fs (RSS %d MiB)",
            self.batching.max_batch_size, self.warm_up_seconds, self.rss_warmed_bytes >> 20,
        )

    async def __call__(self, request: ModelRequest) -> Reply:
        """Weigh (headers) and reserve the request's memory (``MemoryAdmission``: 413 if it could
        never fit, 503 past the waiting bound); then decode and prepare in a worker thread while
        earlier batches run the network, queue the prepared request, and encode its result after
        its batch; the reservation is released once it is encoded, or however the request ends."""
        try:
            (pixels, decoded), cost = request_footprint(self.model, request), self._cost(request)
        except StylefleetError as exc:
            return exc
        if self._admission is None or self.kind.memory is None:
            return await self._serve(request, pixels, cost)
        cost_of, params = self.kind.memory, request.params
        try:
            # Reserved before decoding, released once encoded: what a replica holds decoded,
            # queued, in the network and encoding fits its budget together.
            largest = cost_of.largest_side(self._admission.budget_bytes, params)
            async with self._admission.reserve(cost_of.of(pixels, decoded, params), largest):
                return await self._serve(request, pixels, cost)
        except StylefleetError as exc:  # refused: never fits (413), or too many wait (503)
            return exc

    async def _serve(self, request: ModelRequest, pixels: int, cost: int) -> Reply:
        prepared = await asyncio.to_thread(self._timed, prepare_one, self.model, request)
        if isinstance(prepared, StylefleetError):
            return prepared
        outcome = await self._enqueue(_Queued(time.monotonic(), request, cost, pixels, prepared))
        [reply] = await asyncio.to_thread(self._timed, encode_outcomes, [request], [outcome], self.model_sha256)
        return reply

    async def _run_items(self, items: list[_Queued]) -> list[Outcome]:  # type: ignore[override]
        self._batch_started(items)
        # Alone: one request, no other batch in its network call and nothing queued behind it.
        # Its call then runs on every core the replica was sized for (lone_call_threads); a
        # request arriving meanwhile starts its own call as usual. One request only: the lone
        # session's arena then holds one image's activations, not a whole batch's
        # (docs/performance.md "A lone request on every core": +450 MiB for u2netp, 1.1 GiB at 4).
        alone = runs_alone(len(items), self._in_flight, self.queued)
        self.lone_batches += alone and self.lone_call_threads is not None
        self._in_flight += 1
        try:
            prepared, pixels = [item.prepared for item in items], [item.pixels for item in items]
            return await asyncio.to_thread(self._timed, self._infer, prepared, pixels, alone)
        finally:
            self._in_flight -= 1

    def _infer(self, prepared: list[Any], pixels: list[int], alone: bool = False) -> list[Outcome]:
        try:
            with running_alone(alone):
                return infer_prepared(self.model, prepared, pixels, self.pixel_budget)
        finally:
            if self._limiter is not None:
                self._record_memory()

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` and add its time to ``compute_seconds`` (the replica's own work)."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._seconds_lock:  # two batches' threads add at once
                self.compute_seconds += time.perf_counter() - started

    def _record_memory(self) -> None:
        assert self._limiter is not None and self._memory_metrics is not None
        self._memory_metrics.record(self._limiter)

    def info(self) -> dict[str, Any]:
        return {
            "model": self.kind.name,
            "task": self.kind.task,
            "model_sha256": self.model_sha256,
            "load_seconds": round(self.load_seconds, 3),
            "gpu_memory_cap_bytes": self.gpu_memory_cap_bytes,
            "model_calls": self.concurrent_batches,
            "lone_call_threads": self.lone_call_threads,
            "lone_batches": self.lone_batches,
            "warm_up_seconds": None if self.warm_up_seconds is None else round(self.warm_up_seconds, 2),
            "rss_warmed_bytes": self.rss_warmed_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            **(self._admission.info() if self._admission is not None else {}),
            **self._batch_info(),
            **(self.model.info() if isinstance(self.model, Describing) else {}),
        }


class ComposedServer(_Batched):
    """A composed kind: no weights of its own; each role is a handle to another deployment.

    ``spec.uses`` maps each role to the used deployment's spec (its name, for messages);
    ``handles`` the same roles to their handles.
    """

    # A composed batch mostly waits on the deployments it uses; a second batch in flight keeps
    # them fed while the first one composes. max_ongoing_requests (16) holds both (2 x 8).
    concurrent_batches = 2

    def __init__(self, spec: ModelSpec, handles: dict[str, DeploymentHandle]) -> None:
        super().__init__(KINDS[spec.model])
        missing = set(self.kind.needs) - set(handles)
        if missing:
            raise ValueError(f"the {spec.model} model needs handles for {sorted(missing)}")
        loaded = load_model(spec)
        self.model = loaded.model
        self._handles = handles
        self._uses = {role: used.deployment for role, used in spec.uses.items()}
        self.model_sha256 = loaded.model_sha256
        self.stages = StageClock()

    async def _run_items(self, items: list[_Queued]) -> list[Reply]:
        requests = self._batch_started(items)
        started = time.perf_counter()
        try:
            return await run_composed(self.model, requests, self._call, self.stages, self.model_sha256)
        finally:
            self.compute_seconds += time.perf_counter() - started

    async def _call(self, role: str, request: ModelRequest) -> Reply:
        return await call_deployment(self._handles[role], self._uses[role], request)

    def info(self) -> dict[str, Any]:
        return {
            "model": self.kind.name,
            "task": self.kind.task,
            "model_sha256": self.model_sha256,
            "uses": dict(self._uses),
            "stages": self.stages.snapshot(),
            **self._batch_info(),
        }


class _MemoryMetrics:
    """Prometheus series for memory-aware batching (Ray's metrics agent exports them)."""

    def __init__(self) -> None:
        from ray.util import metrics

        tags = ("deployment",)
        self._deployment = serve.get_replica_context().deployment
        self._limit = metrics.Gauge(
            "stylefleet_effective_max_batch_weight",
            description="batch limit in force (weight units); below the configured one after an out-of-memory",
            tag_keys=tags,
        )
        self._probed = metrics.Gauge(
            "stylefleet_probed_max_batch_weight",
            description="largest batch found to fit in GPU memory at start-up (weight units)",
            tag_keys=tags,
        )
        self._oom = metrics.Counter(
            "stylefleet_out_of_memory_total",
            description="pipeline calls that ran out of GPU memory and were split in half",
            tag_keys=tags,
        )
        self._oom_seen = 0

    def record(self, limiter: BatchLimiter) -> None:
        tags = {"deployment": self._deployment}
        self._limit.set(limiter.limit, tags=tags)
        if limiter.probed is not None:
            self._probed.set(limiter.probed, tags=tags)
        if limiter.oom_total > self._oom_seen:
            self._oom.inc(limiter.oom_total - self._oom_seen, tags=tags)
            self._oom_seen = limiter.oom_total
