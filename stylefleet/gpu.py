"""GPU shares: Ray's ``num_gpus: 0.25`` is a logical share only, so each replica caps its own memory.

Pure helpers (testable without a GPU) plus a thin NVML reader for the per-replica metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# What the CUDA context and kernels' workspaces take outside ONNX Runtime's/torch's arenas.
DEFAULT_HEADROOM_BYTES = 512 * 1024 * 1024


def memory_cap_bytes(num_gpus: float, total_bytes: int, headroom_bytes: int = DEFAULT_HEADROOM_BYTES) -> int:
    """The memory one replica may take: its share of the card, less per-process headroom."""
    if not num_gpus > 0:
        raise ValueError(f"num_gpus must be positive, got {num_gpus}")
    share = min(num_gpus, 1.0)
    return max(0, int(total_bytes * share) - headroom_bytes)


def torch_memory_fraction(
    num_gpus: float, total_bytes: int | None = None, headroom_bytes: int = DEFAULT_HEADROOM_BYTES
) -> float:
    """For ``torch.cuda.set_per_process_memory_fraction``: the share, at most 1.

    Given the card's memory, the same cap as ONNX Runtime's (``memory_cap_bytes``): the share
    less the headroom for the CUDA context, which torch's allocator does not count. Without it,
    two replicas at 0.5 would let their allocators take the whole card, and the second CUDA
    context would push one of them over.
    """
    share = min(max(num_gpus, 0.0), 1.0)
    if total_bytes is None or share == 0.0:
        return share
    return memory_cap_bytes(share, total_bytes, headroom_bytes) / total_bytes


@dataclass(frozen=True)
class GpuReading:
    utilization_ratio: float  # 0..1 over NVML's last sample period
    memory_used_bytes: int  # by this process
    memory_total_bytes: int


class Nvml:
    """NVML through ``nvidia-ml-py``; ``open()`` returns None where there is no GPU or no library."""

    def __init__(self, handle: object, pynvml: object) -> None:
        self._handle = handle
        self._nvml = pynvml

    @classmethod
    def open(cls, device_index: int = 0) -> Nvml | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml.nvmlDeviceGetHandleByIndex(device_index), pynvml)
        except Exception as exc:  # noqa: BLE001 - no GPU, no driver or no library: no GPU metrics
            logger.info("no NVML (%s): GPU metrics are off for this replica", exc)
            return None

    def total_memory_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)  # type: ignore[attr-defined]

    def device_memory_used_bytes(self) -> int:
        """Memory in use on the whole card, by every process (the benchmark's served replicas)."""
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)  # type: ignore[attr-defined]

    def utilization_ratio(self) -> float:
        return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu) / 100.0  # type: ignore[attr-defined]

    def name(self) -> str:
        name = self._nvml.nvmlDeviceGetName(self._handle)  # type: ignore[attr-defined]
        return name.decode() if isinstance(name, bytes) else str(name)

    def read(self, pid: int) -> GpuReading:
        nvml = self._nvml
        util = nvml.nvmlDeviceGetUtilizationRates(self._handle)  # type: ignore[attr-defined]
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)  # type: ignore[attr-defined]
        used = sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)
        return GpuReading(utilization_ratio=util.gpu / 100.0, memory_used_bytes=used, memory_total_bytes=self.total_memory_bytes())
