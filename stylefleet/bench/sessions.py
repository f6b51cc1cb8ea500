"""``stylefleet bench sessions``: ONNX Runtime session options, measured on the real networks.

Each model is built by its own factory (the code the replicas run) once per configuration, and
the configurations take turns call by call (A B C A B C ...), so the machine's drift hits them
alike; each row is the median over the rounds and its ratio to the fastest row of that model
and batch size. The ``+shrink`` row runs every call inside ``releasing_arena()`` (the arena
gives its free chunks back after each call); ``same-as-requested`` registers a process-wide
CPU arena that grows by exactly what is asked (ONNX Runtime's ``kSameAsRequested``).

A benchmark: it prints and writes JSON, it asserts nothing; rounds and time are bounded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stylefleet.bench.runtime import BenchRuntime
from stylefleet.config import ModelSpec
from stylefleet.deployments.batching import ModelRequest
from stylefleet.deployments.loader import load_model
from stylefleet.deployments.memory import releasing_arena
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores

SHIPPED = BenchRuntime(threads=None)  # what the CPU default runs: arena and patterns on, no spinning


@dataclass(frozen=True)
class SessionConfig:
    name: str
    runtime: RuntimeOptions
    shrink_every_call: bool = False
    same_as_requested: bool = False
    parallel_calls: int = 1  # calls run at once, from as many threads (model_calls)


def configurations() -> list[SessionConfig]:
    cores = available_cores()
    return [
        SessionConfig(f"shipped: arena, patterns, {cores} threads, no spinning", SHIPPED),
        SessionConfig("  + spinning", replace(SHIPPED, spinning=True)),
        SessionConfig("  patterns off", replace(SHIPPED, mem_pattern=False)),
        SessionConfig("  arena shrunk after every call", SHIPPED, shrink_every_call=True),
        SessionConfig(
            "  arena grows as requested (kSameAsRequested)", replace(SHIPPED, env_allocators=True), same_as_requested=True
        ),
        SessionConfig("  arena off, patterns off", replace(SHIPPED, arena=False, mem_pattern=False)),
        SessionConfig("  1 thread", replace(SHIPPED, threads=1)),
        SessionConfig(f"  {cores} calls at once, 1 thread each", replace(SHIPPED, threads=1), parallel_calls=cores),
        SessionConfig("before: arena off, patterns off, 1 thread", BenchRuntime(threads=1, arena=False, mem_pattern=False)),
    ]


# (kind, style fixed params, input photo side): what each model is measured on.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "multistyle26": ("stylize", {"style": "14", "max_side": 512}),
    "arbitrary": ("restyle", {"max_side": 512}),
    "u2netp": ("remove-background", {}),
}


def _build(kind: str, config: SessionConfig) -> Any:
    if config.same_as_requested:
        _register_same_as_requested_arena()
    return load_model(ModelSpec(deployment=kind, model=kind), runtime=config.runtime).model


def _register_same_as_requested_arena() -> None:
    """A process-wide CPU arena with kSameAsRequested; sessions opt in with ``env_allocators``.
    Registering a second one raises, so this runs once per benchmark process."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
    except Exception as exc:  # noqa: BLE001 - already registered in this process
        if "already" not in str(exc).lower():
            raise


def _infer_fn(model: Any, prepared: list[Any], config: SessionConfig) -> Callable[[], None]:
    if config.parallel_calls > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(config.parallel_calls)

        def parallel() -> None:
            list(pool.map(lambda _: model.infer(prepared), range(config.parallel_calls)))

        return parallel
    if config.shrink_every_call:

        def call() -> None:
            with releasing_arena():
                model.infer(prepared)

        return call
    return lambda: model.infer(prepared)


def alternating_times(fns: list[Callable[[], None]], rounds: int, budget_s: float) -> list[list[float]]:
    """Seconds per call of each function after one warm-up call each, timed in turns (A B A B
    ...) so the machine's drift hits them alike; at most ``rounds`` rounds or ``budget_s``."""
    for fn in fns:
        fn()  # warm-up: first-call allocation and plan
    times: list[list[float]] = [[] for _ in fns]
    deadline = time.monotonic() + budget_s
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    return times


def sweep(photo: np.ndarray, batch_sizes: list[int], rounds: int, budget_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, (task, params) in MODELS.items():
        for batch in batch_sizes:
            rows += _sweep_one(kind, task, params, photo, batch, rounds, budget_s)
    return rows


def _sweep_one(
    kind: str, task: str, params: dict[str, Any], photo: np.ndarray, batch: int, rounds: int, budget_s: float
) -> list[dict[str, Any]]:
    configs = configurations()
    images = {"image": photo, "style_image": photo} if kind == "arbitrary" else {"image": photo}
    calls = []
    for config in configs:
        model = _build(kind, config)
        prepared = [model.prepare(ModelRequest(dict(images), dict(params))) for _ in range(batch)]
        call = _infer_fn(model, prepared, config)
        calls.append(call)
    times = alternating_times(calls, rounds, budget_s)
    # seconds per image: a parallel row does batch x parallel_calls images per call
    medians = [statistics.median(t) / c.parallel_calls for t, c in zip(times, configs)]
    best = min(medians)
    rows = []
    for config, median, samples in zip(configs, medians, times):
        rows.append(
            {
                "model": kind,
                "task": task,
                "batch_size": batch,
                "config": config.name.strip(),
                "images_per_s": round(batch / median, 2),
                "vs_fastest": round(best / median, 3),
                "rounds": len(samples),
            }
        )
        print(f"  {kind:<13} batch {batch}: {config.name:<50} {batch / median:7.2f} img/s  {best / median:5.2f}x of fastest", flush=True)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench-results/sessions.json")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per configuration")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget per model and batch size")
    parser.set_defaults(config="serve_config.yaml")  # recorded in the JSON, as the served run records its config


def main(args: argparse.Namespace) -> int:
    """The sweep on the astronaut, written beside the machine's description."""
    from pathlib import Path

    from stylefleet.bench.common import machine, sample_photos, write
    from stylefleet.imageio import decode

    samples = sample_photos()
    results: dict[str, Any] = {"machine": machine(), "config": args.config, "models": {}}
    print(f"== ONNX Runtime session options, batch {args.batch_sizes}, {args.rounds} alternating rounds", flush=True)
    photo = decode(samples["image"], max_pixels=10**8).pixels
    results["sessions"] = sweep(photo, [int(x) for x in args.batch_sizes.split(",")], args.rounds, args.seconds)
    write(Path(args.out), results)
    return 0
