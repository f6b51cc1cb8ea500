"""``stylefleet bench int8``: the bare u2netp network, fp32 against its int8 copy, as a replica runs them.

Both networks are loaded with the replica's session options (``make_session`` with u2netp's
``RuntimeOptions``: one intra-op thread, memory patterns off, graph optimisation ALL) and called
in turns (fp32, int8, fp32, ...), so the machine's drift hits them alike; each figure is the
median per image. It also counts what ONNX Runtime's optimiser makes of the QDQ graph (the
QDQ pairs around a Conv become one ``QLinearConv``). The int8 file comes from the model cache
(``stylefleet quantize`` builds it). A benchmark: it prints and writes JSON, it asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench-results/int8.json")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--rounds", type=int, default=8, help="alternating calls per network and batch size")
    parser.add_argument("--cache-dir", default=None, help="the model cache (default: as `stylefleet quantize`)")


def optimised_ops(model_bytes: bytes) -> dict[str, int]:
    """Node counts of the graph ONNX Runtime runs at ``ORT_ENABLE_ALL`` (CPU)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="stylefleet-bench-int8.") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = f"{tmp}/optimised.onnx"
        opts.log_severity_level = 3
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(f"{tmp}/optimised.onnx").graph.node))


def main(args: argparse.Namespace) -> int:
    from stylefleet.bench.common import machine, write
    from stylefleet.deployments import quantize
    from stylefleet.deployments.onnx_session import RuntimeOptions, make_session

    folder = Path(args.cache_dir).expanduser() if args.cache_dir else quantize.cache_dir()
    int8 = quantize.ensure("u2netp_int8", folder).path.read_bytes()
    fp32 = quantize.source_bytes("u2netp_int8")
    ops = optimised_ops(int8)
    print(f"int8 graph at ORT_ENABLE_ALL: {ops.get('QLinearConv', 0)} QLinearConv, {ops.get('Conv', 0)} Conv, "
          f"{ops.get('DequantizeLinear', 0)} DequantizeLinear, {ops.get('QuantizeLinear', 0)} QuantizeLinear", flush=True)
    runtime = RuntimeOptions(threads=1, mem_pattern=False)  # u2netp's replica options (kinds: memory patterns off)
    sessions = {"fp32": make_session(fp32, runtime), "int8": make_session(int8, runtime)}
    tensors = np.stack(quantize.calibration_tensors(["astronaut", "coffee"])[:4])
    rows: list[dict[str, Any]] = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        feed = {"input.1": np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))}
        for session in sessions.values():
            session.run(None, feed)
            session.run(None, feed)
        seconds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feed)
                seconds[name].append((time.perf_counter() - started) / batch)
        medians = {name: statistics.median(s) for name, s in seconds.items()}
        row = {"batch": batch, **{f"{n}_ms_per_image": round(m * 1000, 1) for n, m in medians.items()},
               "fp32_over_int8": round(medians["fp32"] / medians["int8"], 2)}
        print(f"batch {batch}: fp32 {row['fp32_ms_per_image']} ms/image, int8 {row['int8_ms_per_image']} ms/image, "
              f"fp32/int8 {row['fp32_over_int8']}x", flush=True)
        rows.append(row)
    write(Path(args.out), {"machine": machine(), "optimised_ops": ops, "rows": rows})
    return 0
