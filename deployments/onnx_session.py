"""ONNX Runtime sessions sized for serving: true batches, bounded memory, threads = CPU share.

The shipped ONNX files have batch size 1 baked into their inputs, outputs and some Reshape
targets. ``with_symbolic_batch`` rewrites dim 0 to a symbolic name and the leading ``1`` of
constant Reshape targets to ``-1``, so one call runs N images. Checked for all four networks:
a batch of N gives bitwise the same outputs as N single calls (tests/unit/test_models.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a replica runs its networks. ``threads`` should equal the replica's CPU share."""

    device: Device = "cpu"
    threads: int = 1
    gpu_mem_limit_bytes: int | None = None
    gpu_device_id: int = 0


def with_symbolic_batch(path: Path) -> bytes:
    """Return the model serialised with a symbolic batch dimension."""
    model = onnx.load(str(path))
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        target = numpy_helper.to_array(initializers[node.input[1]])
        if target.ndim == 1 and target.size > 1 and target[0] == 1 and -1 not in target:
            batched = target.copy()
            batched[0] = -1
            name = f"{node.input[1]}__stylefleet_batch"
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(batched, name)
                graph.initializer.append(initializers[name])
            node.input[1] = name
    # Shapes inferred for batch 1 would contradict the new symbolic dimension.
    del graph.value_info[:]
    return model.SerializeToString()


def make_session(model_bytes: bytes, options: RuntimeOptions) -> ort.InferenceSession:
    """An InferenceSession whose memory stays bounded under load.

    The CPU memory arena keeps the peak of the largest batch forever (3-5 GiB per replica at
    batch 8), and memory patterns cache a plan per input shape; both are off. On CUDA the
    arena grows only as requested and is capped at ``gpu_mem_limit_bytes``.
    """
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.intra_op_num_threads = max(1, options.threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
    if options.device == "cuda":
        cuda: dict[str, object] = {
            "device_id": options.gpu_device_id,
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
        if options.gpu_mem_limit_bytes:
            cuda["gpu_mem_limit"] = int(options.gpu_mem_limit_bytes)
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    session = ort.InferenceSession(model_bytes, opts, providers=providers)
    if options.device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # onnxruntime silently falls back to CPU when the CUDA libraries fail to load.
        raise RuntimeError(
            "device 'cuda' asked for but onnxruntime could not start CUDAExecutionProvider "
            f"(available: {ort.get_available_providers()}); install onnxruntime-gpu with CUDA 12 and cuDNN 9"
        )
    return session


def input_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, feeds)
