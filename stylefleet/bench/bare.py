"""``stylefleet bench bare``: each ONNX model in this process, at its fastest session setup.

Per model: model only at the fastest of three session setups (one call on every core, the same
with spinning, and one one-thread call per core at once: what the replica runs) and end to end
(decode, pre/post-processing, PNG encode), timed in turns so that the machine's drift hits them
alike. The composed ``id-photo`` pipeline: the median time of each stage on one photo. These
rows are the yardstick of ``stylefleet bench served``, which runs them first.

A benchmark, not a test: it measures and prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stylefleet.bench.common import IDPHOTO_PARAMS, ints, machine, sample_photos, selected_cases, write
from stylefleet.bench.load import Case
from stylefleet.bench.runtime import BenchRuntime
from stylefleet.config import ModelSpec
from stylefleet.deployments.batching import ModelRequest, OutputSpec, decoded, encode_outcomes, run_batch
from stylefleet.deployments.loader import load_model, runtime_options
from stylefleet.imageio import decode
from stylefleet.spec import AppSpec, load_serve_file


def alternating_rates(fns: list[Callable[[], None]], images: int, repeats: int = 5, budget_s: float = 30.0) -> list[float]:
    """Images/s of each function, timed in turns (A B A B ...): drift hits them alike."""
    from stylefleet.bench.sessions import alternating_times

    return [images / statistics.median(t) for t in alternating_times(fns, repeats, budget_s)]


PARALLEL = "parallel_one_thread_calls"  # one one-thread call per core at once: what the replica runs


SETUPS = ("one_call_all_threads", "one_call_all_threads_spinning", PARALLEL)


BARE_CONTENDERS = 2  # the sweep's leading setups a bare turn times again; each holds a session (memory)


def bare_contenders(ranked: list[tuple[float, str, int]], served_batch: int) -> list[tuple[float, str, int]]:
    """The setups a bare turn times: the sweep's ``BARE_CONTENDERS`` fastest, and the replica's own
    (one one-thread call per core at its ``max_batch_size``) when the sweep timed it and ranked it
    lower. A noisy sweep can leave the replica's setup out, and a bare side slower than what the
    service runs would flatter served/bare."""
    picked = ranked[:BARE_CONTENDERS]
    own = next((r for r in ranked if r[1] == PARALLEL and r[2] == served_batch), None)
    if own is not None and own not in picked:
        picked.append(own)
    return picked


def setup_model(model: ModelSpec, setup: str, threads: int | None) -> Any:
    """The deployment's own model (files, checksums, options) at one of the three session setups."""
    spec = model.model_copy(update={"threads": 1 if setup == PARALLEL else threads})
    runtime = BenchRuntime.of(runtime_options(spec), spinning=setup.endswith("_spinning"))
    return load_model(spec, runtime=runtime).model


class BareProbe:
    """One bare setup of one model (session setup and batch size, from the sweep), built again on
    its own, warmed up, and timed on demand: the bare side of ``in_turns``. Built only for its
    turns and closed after them: a bare model's arena beside every replica's once ran the
    machine out of memory."""

    def __init__(
        self,
        case: Case,
        model: ModelSpec,
        samples: dict[str, bytes],
        setup: str,
        batch_size: int,
        threads: int | None,
        warmup_s: float = 2.0,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from stylefleet.deployments.onnx_session import available_cores

        self.setup, self.batch_size = setup, batch_size
        net = setup_model(model, setup, threads)
        requests = [decoded(net, ModelRequest({}, dict(case.params), files={f: samples[f] for f in case.files})) for _ in range(batch_size)]
        prepared = [net.prepare(r) for r in requests]
        self._calls = available_cores() if setup == PARALLEL else 1
        self.images_per_call = batch_size * self._calls
        self._pool = ThreadPoolExecutor(self._calls)
        self._one = lambda: net.infer(prepared)
        self.warm(warmup_s)

    def warm(self, seconds: float) -> None:
        """Calls for about ``seconds`` (at least one): a fresh session's first seconds run at
        two thirds of its later ones while its arena grows and its threads settle."""
        t0 = time.perf_counter()
        self.call()
        while time.perf_counter() - t0 < seconds:
            self.call()

    def call(self) -> None:
        list(self._pool.map(lambda _: self._one(), range(self._calls)))

    def rate(self, seconds: float = 3.0) -> float:
        """Images/s over whole calls (at least two) for about ``seconds``, after one warm-up call."""
        self.call()
        calls, t0 = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - t0 < seconds:
            self.call()
            calls += 1
        return calls * self.images_per_call / (time.perf_counter() - t0)

    def close(self) -> None:
        self._pool.shutdown()
        del self._one  # the session and its arena go with it


def bare(
    case: Case, model: ModelSpec, samples: dict[str, bytes], batch_sizes: list[int], threads: int | None
) -> tuple[list[dict[str, Any]], list[tuple[float, str, int]]]:
    """Model only at the fastest of three session setups (one call on every core, the same with
    spinning, and one one-thread call per core at once: what the replica runs), and end to end
    (decode, pre/post-processing, PNG encode) with one-thread calls, one per core at once. Also
    every model-only (images/s, setup, batch size), fastest first, for ``BareProbe`` to time
    again beside the served levels."""
    from concurrent.futures import ThreadPoolExecutor

    from stylefleet.deployments.onnx_session import available_cores

    cores = available_cores()
    models = {setup: setup_model(model, setup, threads) for setup in SETUPS}
    pool = ThreadPoolExecutor(cores)
    fixed = case.params
    rows = []
    def parallel(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            list(pool.map(lambda _: fn(), range(cores)))

        return run

    def contenders(b: int) -> list[Callable[[], None]]:
        """The four timed functions at batch size ``b``, their inputs prepared up front."""
        requests = [ModelRequest({}, dict(fixed), files={f: samples[f] for f in case.files}) for _ in range(b)]
        requests = [decoded(models["parallel_one_thread_calls"], r) for r in requests]
        prepared = {name: [m.prepare(r) for r in requests] for name, m in models.items()}
        narrow = models["parallel_one_thread_calls"]

        def end_to_end() -> None:
            reqs = [ModelRequest({}, dict(fixed), OutputSpec("png"), files={f: samples[f] for f in case.files}) for _ in range(b)]
            encode_outcomes(reqs, run_batch(narrow, reqs), "")

        return [
            lambda: models["one_call_all_threads"].infer(prepared["one_call_all_threads"]),
            lambda: models["one_call_all_threads_spinning"].infer(prepared["one_call_all_threads_spinning"]),
            parallel(lambda: narrow.infer(prepared["parallel_one_thread_calls"])),
            parallel(end_to_end),
        ]

    ranked: list[tuple[float, str, int]] = []
    for b in batch_sizes:
        fns = contenders(b)
        one, spin, par, e2e = alternating_rates(fns, b)
        par, e2e = par * cores, e2e * cores  # each of those calls did b images, cores times over
        fastest = max(one, spin, par)
        ranked += [(rate, setup, b) for rate, setup in zip((one, spin, par), SETUPS, strict=True)]
        rows.append(
            {
                "batch_size": b,
                "model_only_one_call_ips": round(one, 2),
                "model_only_one_call_spinning_ips": round(spin, 2),
                "model_only_parallel_calls_ips": round(par, 2),
                "fastest_model_only_ips": round(fastest, 2),
                "end_to_end_ips": round(e2e, 2),
            }
        )
        print(
            f"  bare {case.deployment:<18} batch {b}: model {one:6.2f} img/s one call on {threads or cores} threads "
            f"(spinning {spin:6.2f}), {par:6.2f} as {cores} one-thread calls; end to end {e2e:6.2f} img/s",
            flush=True,
        )
    pool.shutdown()
    assert ranked, "bare needs at least one batch size"
    return rows, sorted(ranked, reverse=True)


def idphoto_bare(case: Case, spec: AppSpec, samples: dict[str, bytes], threads: int | None, repeats: int = 5) -> dict[str, Any]:
    """Each stage of the pipeline on one photo, in this process: median seconds and shares."""
    model = spec.model_spec(case.deployment)
    roles = {}
    for role, used in model.uses.items():
        roles[role] = load_model(used.model_copy(update={"threads": threads or used.threads})).model
    pipeline = load_model(model).model
    output = OutputSpec(IDPHOTO_PARAMS["format"])  # type: ignore[arg-type]
    params = {k: v for k, v in IDPHOTO_PARAMS.items() if k != "format"}
    times: dict[str, list[float]] = {"decode": [], "matte": [], "face": [], "compose": [], "encode": []}
    for i in range(repeats + 1):  # the first round warms up
        lap: dict[str, float] = {}
        t0 = time.perf_counter()
        pixels = decode(samples["image"], max_pixels=10**8).pixels
        lap["decode"] = time.perf_counter() - t0
        prepared = pipeline.prepare(ModelRequest({"image": pixels}, dict(params), output))
        replies: dict[str, Any] = {}
        stages = {"matte": "matte", "faces": "face"}
        for follow_up in (False, True):  # the first calls, then their follow-ups
            subs = pipeline.then(prepared, replies) if follow_up else pipeline.calls(prepared)
            for role, sub in subs.items():
                t0 = time.perf_counter()
                [replies[role]] = run_batch(roles[role], [sub])
                lap[stages[role]] = time.perf_counter() - t0
        t0 = time.perf_counter()
        photo = pipeline.compose(prepared, replies)
        lap["compose"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipeline.encode(prepared, photo, output, "")
        lap["encode"] = time.perf_counter() - t0
        if i:
            for k, v in lap.items():
                times[k].append(v)
    medians = {k: statistics.median(v) for k, v in times.items()}
    total = sum(medians.values())
    print(
        f"  bare {case.deployment:<18} {1 / total:6.2f} photos/s  "
        + "  ".join(f"{k} {v * 1000:6.1f} ms ({v / total:4.0%})" for k, v in medians.items()),
        flush=True,
    )
    return {
        "photos_per_s": round(1 / total, 2),
        "stage_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
        "stage_share": {k: round(v / total, 3) for k, v in medians.items()},
    }


def measure(
    spec: AppSpec, cases: list[Case], idphoto_cases: list[Case], samples: dict[str, bytes], batch_sizes: list[int],
    threads: int | None, results: dict[str, Any],
) -> dict[str, list[tuple[float, str, int]]]:
    """Every case's bare rows into ``results["models"]``; returns each deployment's ranked setups."""
    ranked_setups: dict[str, list[tuple[float, str, int]]] = {}
    print(f"== bare, in-process, {threads or 'all'} threads (astronaut 512x512 JPEG; restyle uses the cat as style)", flush=True)
    for case in cases:
        rows, ranked_setups[case.deployment] = bare(case, spec.model_spec(case.deployment), samples, batch_sizes, threads)
        results["models"][case.deployment] = {"style": case.style, "bare": rows}
    for case in idphoto_cases:
        results["models"][case.deployment] = {
            "style": case.style,
            "params": case.params,
            "bare": idphoto_bare(case, spec, samples, threads),
        }
    return ranked_setups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--out", default="bench-results/bare.json")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--only", default="", help="comma-separated deployments to measure (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads for the one-call setups (default: every core)")


def main(args: argparse.Namespace) -> int:
    samples = sample_photos()
    results: dict[str, Any] = {"machine": machine(), "config": args.config, "models": {}}
    spec = load_serve_file(args.config).app
    cases, idphoto_cases = selected_cases(spec, args.only)
    measure(spec, cases, idphoto_cases, samples, ints(args.batch_sizes), args.threads, results)
    write(Path(args.out), results)
    return 0
