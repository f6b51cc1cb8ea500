"""The Ray Serve wrapper around a model: it queues, batches, moves compute off the event loop.

One class serves every model kind; the app builder deploys it once per configured deployment
(``.options(name=...)``), so each model has its own deployment, replicas and batch queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray import serve

from deployments.batching import ModelRequest, Reply, encode_outcomes, run_batch
from deployments.kinds import KINDS
from deployments.memory import BatchLimiter
from deployments.onnx_session import RuntimeOptions
from deployments.registry import resolve
from stylefleet.config import BatchingConfig, check_batch_fits

logger = logging.getLogger("ray.serve")


@dataclass
class _Cap:
    """The live max_batch_size, shared with queued items so that none ever weighs more than it."""

    value: int = BatchingConfig().max_batch_size


@dataclass
class _Queued:
    request: ModelRequest
    cost: int
    cap: _Cap

    @property
    def weight(self) -> int:
        # Serve fails an item heavier than max_batch_size outright; such an item runs alone instead.
        return min(self.cost, self.cap.value)


def batch_weight(items: list[_Queued]) -> int:
    """``@serve.batch``'s batch_size_fn: the sum of the items' weights (1 each unless the model weighs)."""
    return sum(item.weight for item in items)


class ModelServer:
    """Loads one model at start (a missing or corrupt file fails the replica with a clear message)."""

    def __init__(
        self,
        kind: str,
        runtime: RuntimeOptions,
        model_paths: dict[str, str | None],
        model_dir: str | None = None,
        allow_download: bool = False,
        model_sha256s: dict[str, str | None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = KINDS[kind]
        started = time.perf_counter()
        pinned = model_sha256s or {}
        files = [
            resolve(
                name,
                path=model_paths.get(name),
                model_dir=model_dir,
                allow_download=allow_download,
                sha256=pinned.get(name),
            )
            for name in self.kind.files
        ]
        self.model = self.kind.factory(files, runtime, {**(options or {}), "allow_download": allow_download})
        self.model_sha256 = "+".join(f.sha256 for f in files) if files else str(getattr(self.model, "checksum", ""))
        self.load_seconds = time.perf_counter() - started
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size (in requests) ran
        self._cap = _Cap()
        self._limiter: BatchLimiter | None = getattr(self.model, "limiter", None)
        self._metrics = _MemoryMetrics() if self._limiter is not None else None
        logger.info("loaded %s (%s) in %.2fs", kind, self.model_sha256[:12], self.load_seconds)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (a BatchingConfig) at run time, without restarting the replica.

        A bad value raises here, which fails the deploy with the field named in the message.
        """
        config = BatchingConfig.model_validate(user_config)
        check_batch_fits(config, self._max_ongoing_requests())
        self._cap.value = config.max_batch_size
        self.handle_batch.set_max_batch_size(config.max_batch_size)
        self.handle_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if self._limiter is not None:
            self._limiter.configured = config.max_batch_size
            self._record_memory()
        logger.info("batching now %s", config.model_dump())

    async def __call__(self, request: ModelRequest) -> Reply:
        """One request in, its own result or its own error out (never a batch mate's)."""
        weigh = getattr(self.model, "weigh", None)
        cost = weigh(request) if weigh is not None else 1
        return await self.handle_batch(_Queued(request, cost, self._cap))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, batch_size_fn=batch_weight)
    async def handle_batch(self, items: list[_Queued]) -> list[Reply]:
        return await asyncio.to_thread(self._compute, [item.request for item in items])

    def _compute(self, requests: list[ModelRequest]) -> list[Reply]:
        self.batch_sizes[len(requests)] += 1
        try:
            return encode_outcomes(requests, run_batch(self.model, requests), self.model_sha256)
        finally:
            if self._limiter is not None:
                self._record_memory()

    def _record_memory(self) -> None:
        assert self._limiter is not None and self._metrics is not None
        self._metrics.record(self._limiter)

    @staticmethod
    def _max_ongoing_requests() -> int:
        # Serve keeps the live deployment config on the replica context (a private field).
        config = getattr(serve.get_replica_context(), "_deployment_config", None)
        return int(getattr(config, "max_ongoing_requests", 1 << 30))

    def info(self) -> dict[str, Any]:
        model_info = getattr(self.model, "info", None)
        return {
            "model": self.kind.name,
            "task": self.kind.task,
            "model_sha256": self.model_sha256,
            "load_seconds": round(self.load_seconds, 3),
            "max_batch_size": self.handle_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self.handle_batch._get_batch_wait_timeout_s(),
            "batch_sizes": dict(self.batch_sizes),
            "replica": serve.get_replica_context().replica_tag,
            **(model_info() if model_info is not None else {}),
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
