"""GPU tier: every test here needs a CUDA device, and is skipped, saying why, where there is none.

Run on a CUDA machine with ``python -m pytest tests/gpu -m gpu`` (docs/gpu.md "GPU benchmark"). The
tests that deploy on Ray Serve are also skipped where Ray is not installed (the GPU machine this
was planned for has none); the rest need only torch, onnxruntime-gpu, diffusers and NVML.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def cuda_reason() -> str | None:
    """Why the GPU tests cannot run here, or None."""
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = cuda_reason()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray Serve, which is not installed here")
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers, which is not installed here")
