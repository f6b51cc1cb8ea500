"""A model replica's figures, through ``ray.serve.metrics`` (which adds the deployment, replica
and application tags itself). Exported by Ray with a ``ray_`` prefix.

Ray exports a gauge's value only for the export interval after it was set, so one-off figures
(model load time) are histograms, and GPU gauges are refreshed by a sampler thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from stylefleet.deployments.log import serve_logger
from stylefleet.gpu import GpuReading

logger = serve_logger(__name__)

# Ray exports a histogram's _sum from bucket midpoints, so buckets are centred on whole sizes:
# sizes 1-4 come out exact, larger ones to within their bucket.
BATCH_SIZE_BUCKETS = [0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 8.5, 12.5, 16.5, 24.5, 32.5, 64.5]
LOAD_BUCKETS_S = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
QUEUE_BUCKETS_S = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ReplicaMetrics:
    def __init__(self, *, gpu: bool) -> None:
        from ray.serve.metrics import Gauge, Histogram

        self._batch_size = Histogram(
            "stylefleet_batch_size", description="requests per batch run by this replica", boundaries=BATCH_SIZE_BUCKETS
        )
        self._queued = Histogram(
            "stylefleet_batch_queue_seconds",
            description="time a request waited in the replica before its batch ran",
            boundaries=QUEUE_BUCKETS_S,
        )
        self._load = Histogram(
            "stylefleet_model_load_seconds",
            description="time replicas took to load their model (one observation per replica start)",
            boundaries=LOAD_BUCKETS_S,
            tag_keys=("model",),
        )
        # Created only where a GPU is present, so a CPU replica exports no GPU series at all.
        self._gpu_util = Gauge("stylefleet_gpu_utilization_ratio", description="GPU busy share, 0-1 (NVML)") if gpu else None
        self._gpu_mem = Gauge("stylefleet_gpu_memory_used_bytes", description="GPU memory used by this replica (NVML)") if gpu else None

    def model_loaded(self, model: str, seconds: float) -> None:
        self._load.observe(seconds, tags={"model": model})

    def batch_started(self, size: int, waits_s: Sequence[float]) -> None:
        self._batch_size.observe(size)
        for wait in waits_s:
            self._queued.observe(max(0.0, wait))

    def gpu(self, reading: GpuReading) -> None:
        if self._gpu_util is not None and self._gpu_mem is not None:
            self._gpu_util.set(reading.utilization_ratio)
            self._gpu_mem.set(reading.memory_used_bytes)


class GpuSampler:
    """Reads NVML every ``interval_s`` on a daemon thread and refreshes the GPU gauges."""

    def __init__(self, metrics: ReplicaMetrics, read: Callable[[], GpuReading], interval_s: float = 5.0) -> None:
        self._metrics, self._read, self._interval_s = metrics, read, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stylefleet-gpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._metrics.gpu(self._read())
            except Exception:  # noqa: BLE001 - a failed sample is skipped, never fatal
                logger.debug("GPU sample failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
