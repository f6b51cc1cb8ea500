"""The Ray Serve wrapper around a model: it queues, batches, moves compute off the event loop,
and records its figures (batch size, time queued before the batch ran, model load time, and on a
GPU the utilisation and memory in use).

One class serves every model kind; the app builder deploys it once per configured deployment
(``.options(name=...)``), so each model has its own deployment, replicas and batch queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from ray import serve

from deployments.batching import ModelRequest, Reply, encode_outcomes, run_batch
from deployments.kinds import KINDS
from deployments.onnx_session import RuntimeOptions
from deployments.registry import resolve
from deployments.metrics import GpuSampler, ReplicaMetrics
from stylefleet.config import BatchingConfig, check_batch_fits
from stylefleet.gpu import Nvml, memory_cap_bytes

logger = logging.getLogger("ray.serve")


class ModelServer:
    """Loads one model at start (a missing or corrupt file fails the replica with a clear message)."""

    def __init__(
        self,
        kind: str,
        runtime: RuntimeOptions,
        model_paths: dict[str, str | None],
        model_dir: str | None = None,
        allow_download: bool = False,
        num_gpus: float = 0.0,
    ) -> None:
        self.kind = KINDS[kind]
        started = time.perf_counter()
        self.nvml = Nvml.open(runtime.gpu_device_id) if runtime.device == "cuda" else None
        if self.nvml is not None and num_gpus > 0:
            cap = memory_cap_bytes(num_gpus, self.nvml.total_memory_bytes())
            runtime = replace(runtime, gpu_mem_limit_bytes=cap)
            logger.info("GPU share %.2f: ONNX Runtime capped at %.2f GiB", num_gpus, cap / 2**30)
        files = [
            resolve(name, path=model_paths.get(name), model_dir=model_dir, allow_download=allow_download)
            for name in self.kind.files
        ]
        self.model = self.kind.factory(files, runtime)
        self.model_sha256 = "+".join(f.sha256 for f in files)
        self.load_seconds = time.perf_counter() - started
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran
        self.metrics = ReplicaMetrics(gpu=self.nvml is not None)
        self.metrics.model_loaded(self.kind.name, self.load_seconds)
        nvml, pid = self.nvml, os.getpid()
        self.gpu_sampler = GpuSampler(self.metrics, lambda: nvml.read(pid)) if nvml is not None else None
        logger.info("loaded %s (%s) in %.2fs", kind, self.model_sha256[:12], self.load_seconds)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (a BatchingConfig) at run time, without restarting the replica.

        A bad value raises here, which fails the deploy with the field named in the message.
        """
        config = BatchingConfig.model_validate(user_config)
        check_batch_fits(config, self._max_ongoing_requests())
        self.handle_batch.set_max_batch_size(config.max_batch_size)
        self.handle_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        logger.info("batching now %s", config.model_dump())

    async def __call__(self, request: ModelRequest) -> Reply:
        """One request in, its own result or its own error out (never a batch mate's)."""
        return await self.handle_batch((time.monotonic(), request))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def handle_batch(self, arrivals: list[tuple[float, ModelRequest]]) -> list[Reply]:
        started = time.monotonic()
        self.metrics.batch_started(len(arrivals), [started - arrived for arrived, _ in arrivals])
        self.batch_sizes[len(arrivals)] += 1
        return await asyncio.to_thread(self._compute, [request for _, request in arrivals])

    def _compute(self, requests: list[ModelRequest]) -> list[Reply]:
        return encode_outcomes(requests, run_batch(self.model, requests), self.model_sha256)

    @staticmethod
    def _max_ongoing_requests() -> int:
        # Serve keeps the live deployment config on the replica context (a private field).
        config = getattr(serve.get_replica_context(), "_deployment_config", None)
        return int(getattr(config, "max_ongoing_requests", 1 << 30))

    def info(self) -> dict[str, Any]:
        return {
            "model": self.kind.name,
            "task": self.kind.task,
            "model_sha256": self.model_sha256,
            "load_seconds": round(self.load_seconds, 3),
            "max_batch_size": self.handle_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self.handle_batch._get_batch_wait_timeout_s(),
            "batch_sizes": dict(self.batch_sizes),
            "replica": serve.get_replica_context().replica_tag,
        }
