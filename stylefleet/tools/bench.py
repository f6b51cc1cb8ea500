"""``stylefleet bench``: the service against the fastest bare ONNX Runtime on the same cores.

Per ONNX model: bare in-process throughput at its fastest session options (the shipped ones and
with spinning, whichever is faster at each batch size; ``--sessions`` measures the whole table),
model only and end to end (decode, pre/post-processing, encode); then the served HTTP throughput
at each concurrency, with p50/p95, the mean batch over every replica, each replica's RSS at the
start and end of the level, the machine's CPU utilisation and the model replicas' share of it.
At saturation it prints served/bare, runs the same load through Serve's ``@serve.batch``
(``queue: serve-batch``) beside the backlog queue, and two styles at once. ``--rembg`` adds
rembg's own server on the same model and photo, alternating with ours; ``--soak-minutes``
holds a sustained load and samples RSS.

The composed ``id-photo`` pipeline is measured on its own: the bare time of each stage in one
process (matte, face, compose, encode), then served photos per second over HTTP and, from the
replicas' own counters, the share of the serving time each stage took.

A benchmark, not a test: it measures and prints, it asserts nothing. Every loop is bounded in
request count and time. It starts its own loopback-only Ray + Serve from the config (on a free
port) so the figures come from a known, otherwise idle service.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from stylefleet.config import BatchingConfig, ModelSpec
from stylefleet.deployments.batching import ModelRequest, OutputSpec, decoded, encode_outcomes, run_batch
from stylefleet.deployments.loader import load_model
from stylefleet.imageio import decode, encode, resize_to_max_side
from stylefleet.spec import AppSpec, load_serve_file
from stylefleet.tools.bench_load import Case, Load, balanced_order, in_turns, median_of_rounds


def _rounds(text: str) -> int:
    """A count of alternating rounds: at least 1 (a median of no rounds is no figure)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 round, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--out", default="bench-results/bench.json")
    parser.add_argument("--batch-sizes", default=None, help="default 1,4,8; --models/--gpu: 1,2,4,8,16 (--tiny: 1,2)")
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per served level (at least 2x concurrency)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per served level")
    parser.add_argument("--only", default="", help="comma-separated deployments to measure (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads for the bare runs (default: every core)")
    parser.add_argument("--idphoto-concurrency", default="16", help="served concurrency levels for the id-photo pipeline")
    parser.add_argument("--sessions", action="store_true", help="only measure ONNX Runtime session options (no service)")
    parser.add_argument("--rounds", type=int, default=5, help="--sessions: rounds per configuration")
    parser.add_argument(
        "--ingress", choices=("auto", "direct", "proxy"), default="auto",
        help="as `stylefleet run --ingress`: the router replica on the port (direct) or Serve's proxy; auto as run picks",
    )
    parser.add_argument(
        "--turns", type=int, default=3,
        help="served/bare at saturation in this many turns (bare, served, ..., bare) after each model's levels; 0: skip",
    )
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="skip the serve-batch and two-styles runs")
    parser.add_argument(
        "--queue-rounds", type=_rounds, default=2,
        help="passes of the serve-batch/backlog comparison, every other one in reverse order (an even count gives every row "
        "the same mean position); each row is the median of its rounds",
    )
    parser.add_argument("--rembg", default=None, help="path of a `rembg` executable: compare remove-background with `rembg s`")
    parser.add_argument("--rembg-rounds", type=_rounds, default=3, help="alternating rounds (ours, rembg) per concurrency")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="hold a sustained load on one style and sample RSS")
    parser.add_argument("--soak-style", default="frost", help="the style the soak loads")
    parser.add_argument(
        "--profile-seconds", type=float, default=0.0,
        help="py-spy each model replica this long at the top level, in a pass after its figures (needs the bench extra)",
    )


def _samples() -> dict[str, bytes]:
    from skimage import data

    return {
        "image": encode(np.ascontiguousarray(data.astronaut()), "jpeg", 95),
        "style_image": encode(np.ascontiguousarray(data.chelsea()), "jpeg", 95),
    }


SMALL_SIDE = 64


def small_samples(samples: dict[str, bytes], side: int = SMALL_SIDE) -> dict[str, bytes]:
    """The same photos at ``side`` px on the longer side: a request whose model time (a few ms)
    is small beside the path around it, so the HTTP path's few ms are not lost in the model's
    own jitter (at 512 px, tens of ms between one call and the next on this machine)."""
    return {name: encode(resize_to_max_side(decode(data, max_pixels=10**8).pixels, side), "jpeg", 95) for name, data in samples.items()}


def _cases(spec: AppSpec) -> list[Case]:
    """One case per deployment: its first single-variant style, with that style's fixed params."""
    cases = []
    for name in spec.deployments:
        kind = spec.kind_of(name)
        style = next((s for s, c in spec.args.styles.items() if c.deployment == name), None)
        if style is not None and not kind.composed:
            cases.append(Case(style=style, deployment=name, params=spec.args.styles[style].params, files=kind.image_fields))
    return cases


IDPHOTO_PARAMS = {"size": "passport", "format": "jpeg"}


def _idphoto_cases(spec: AppSpec) -> list[Case]:
    return [
        Case(style=style, deployment=c.deployment, params=IDPHOTO_PARAMS, files=("image",), fields=tuple(IDPHOTO_PARAMS.items()))
        for style, c in spec.args.styles.items()
        if c.deployment and spec.deployments[c.deployment].model == "id-photo"
    ]


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


def _idphoto_counters(case: Case, spec: AppSpec) -> dict[str, float]:
    """Seconds spent so far per stage, from the replicas: the used deployments' batches, the composer's stages."""
    from ray import serve

    uses = spec.deployments[case.deployment].uses
    out = {}
    for role, stage in (("matte", "matte"), ("faces", "face")):
        out[stage] = float(serve.get_deployment_handle(uses[role], "stylefleet").info.remote().result()["compute_seconds"])
    stages = serve.get_deployment_handle(case.deployment, "stylefleet").info.remote().result()["stages"]
    for stage in ("prepare", "compose", "encode"):
        out[stage] = float(stages.get(stage, {}).get("seconds", 0.0))
    return out


def _shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    total = sum(spent.values())
    return {k: round(v / total, 3) if total else 0.0 for k, v in spent.items()}


def _alternating_rates(fns: list[Callable[[], None]], images: int, repeats: int = 5, budget_s: float = 30.0) -> list[float]:
    """Images/s of each function, timed in turns (A B A B ...): drift hits them alike."""
    from stylefleet.tools.bench_sessions import alternating_times

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


def _setup_model(model: ModelSpec, setup: str, threads: int | None) -> Any:
    """The deployment's own model (files, checksums, options) at one of the three session setups."""
    options = {"threads": 1 if setup == PARALLEL else threads, "spinning": setup.endswith("_spinning")}
    return load_model(model.model_copy(update=options)).model


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
        net = _setup_model(model, setup, threads)
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
    models = {setup: _setup_model(model, setup, threads) for setup in SETUPS}
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
        one, spin, par, e2e = _alternating_rates(fns, b)
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


def _case_load(url: str, case: Case, samples: dict[str, bytes]) -> Load:
    files = {f: (f"{f}.jpg", samples[f], "image/jpeg") for f in case.files}
    return Load(url, f"/v1/styles/{case.style}", files, dict(case.fields))


async def _served_level(url: str, case: Case, samples: dict[str, bytes], concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
    return await _case_load(url, case, samples).run(concurrency, total, cap_s)


def replica_infos(deployment: str, app: str = "stylefleet", tries: int = 40) -> list[dict[str, Any]]:
    """``info()`` of every running replica of a deployment: asked until each has answered once
    (the handle picks replicas itself), at most ``tries`` times."""
    from ray import serve
    from ray.serve.schema import ReplicaState

    status = serve.status().applications[app].deployments[deployment]
    running = int(status.replica_states.get(ReplicaState.RUNNING, 1)) if getattr(status, "replica_states", None) else 1
    handle = serve.get_deployment_handle(deployment, app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        info = handle.info.remote().result()
        seen[info["replica"]] = info
        if len(seen) >= running:
            break
    return list(seen.values())


class Usage:
    """CPU seconds of the machine and of the given processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._machine0 = psutil.cpu_times()
        self._procs0 = self._proc_seconds()

    def stop(self) -> dict[str, float]:
        wall = self.wall_s = time.perf_counter() - self._t0
        m0, m1 = self._machine0, psutil.cpu_times()
        total = sum(m1) - sum(m0)
        idle = (m1.idle + getattr(m1, "iowait", 0.0)) - (m0.idle + getattr(m0, "iowait", 0.0))
        cores = psutil.cpu_count() or 1
        procs = self._proc_seconds() - self._procs0
        return {
            "machine_cpu_utilisation": round(1 - idle / total, 3) if total > 0 else 0.0,
            "model_replicas_cpu_share": round(procs / (wall * cores), 3),
        }

    def _proc_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


# Where a replica's busy thread is, by the first matching frame from the innermost out.
PROFILE_STAGES = (
    ("onnxruntime", "onnxruntime_inference_collection.py"),
    ("decode", "decode (imageio.py"),
    ("encode", "encode (imageio.py"),
    ("resize", "_resize (imageio.py"),
    ("prepare", ".prepare ("),
    ("finish", ".finish ("),
)


class Profiler:
    """``py-spy record`` on one process for a while, summarised as shares of its busy samples."""

    def __init__(self, pid: int, seconds: float) -> None:
        import shutil
        import subprocess
        import tempfile

        self.pid = pid
        self._out = Path(tempfile.mkdtemp(prefix="stylefleet-pyspy-")) / f"{pid}.txt"
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            self._proc = None
            print("  (py-spy not installed: `pip install -e '.[bench]'`; no profile)", flush=True)
            return
        self._proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
             "--format", "raw", "--nonblocking", "--output", str(self._out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def result(self) -> dict[str, Any]:
        if self._proc is None:
            return {"pid": self.pid, "shares": {}}
        self._proc.wait(timeout=600)
        counts: dict[str, int] = {}
        for line in self._out.read_text().splitlines() if self._out.exists() else []:
            stack, _, n = line.rpartition(" ")
            stage = summarise_stack(stack)
            if stage is not None:
                counts[stage] = counts.get(stage, 0) + int(n)
        total = sum(counts.values())
        shares = {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}
        return {"pid": self.pid, "busy_samples": total, "shares": shares, "raw": str(self._out)}


def summarise_stack(stack: str) -> str | None:
    """The stage of one collapsed py-spy stack (outermost;...;innermost). py-spy leaves idle
    threads out; a busy thread outside the batch (the event loop, Ray's own threads) is 'serve'."""
    frames = stack.split(";")
    if not any("._timed (serving.py" in f or "run_composed (" in f for f in frames):
        return "serve"
    for frame in reversed(frames):
        for stage, marker in PROFILE_STAGES:
            if marker in frame:
                return stage
    return "other"


def _mean_batch(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> float:
    """Mean batch size over every replica between two ``replica_infos`` snapshots."""
    old = {i["replica"]: i["batch_sizes"] for i in before}
    diff: dict[int, int] = {}
    for info in after:
        for k, v in info["batch_sizes"].items():
            diff[int(k)] = diff.get(int(k), 0) + int(v) - int(old.get(info["replica"], {}).get(k, 0))
    batches = sum(diff.values())
    return round(sum(k * v for k, v in diff.items()) / batches, 2) if batches else 0.0


def _rss(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"replica": i["replica"], "rss_start_mib": i["rss_start_bytes"] >> 20, "rss_mib": i["rss_bytes"] >> 20} for i in infos
    ]


def measured_level(
    url: str, case: Case, samples: dict[str, bytes], concurrency: int, total: int, cap_s: float, profile_s: float = 0.0
) -> dict[str, Any]:
    """One served level: throughput, latency, batches, CPU and RSS; with ``profile_s``, then a
    separate py-spy pass. The profiler is never running while the figures are taken: sampling a
    replica costs CPU that, on a small machine, the service would otherwise have used."""
    before = replica_infos(case.deployment)
    usage = Usage([i["pid"] for i in before])
    usage.start()
    row = asyncio.run(_served_level(url, case, samples, concurrency, total, cap_s))
    row.update(usage.stop())
    after = replica_infos(case.deployment)
    row["mean_batch_size"] = _mean_batch(before, after)
    seconds = sum(i["compute_seconds"] for i in after) - sum(i["compute_seconds"] for i in before)
    done = row["requests"] - row["errors"]
    if done and concurrency == 1:
        # One request at a time: what is not the replica's own work (decode, model, encode) is
        # the path around it: client, proxy, router, the hops between them. p50 less a mean: it
        # moves by several ms between runs; http_path_ms below is the steadier split.
        row["replica_ms_per_request"] = round(seconds / done * 1000, 1)
        row["overhead_ms"] = round(row["p50_ms"] - row["replica_ms_per_request"], 1)
        row.update(http_path(url, case, samples))
        row.update({f"small_{k}": v for k, v in http_path(url, case, small_samples(samples), pairs=SMALL_PAIRS).items()})
    row["replicas"] = len(after)
    row["rss"] = _rss(after)
    if profile_s > 0:
        profilers = [Profiler(i["pid"], profile_s) for i in after]
        asyncio.run(_served_level(url, case, samples, concurrency, 10_000, profile_s))
        row["profile"] = [p.result() for p in profilers]
        for p in row["profile"]:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in p.get("shares", {}).items())
            print(f"  py-spy {case.deployment} pid {p.get('pid')}: " + shares, flush=True)
    return row


SMALL_PAIRS = 40


def http_path(url: str, case: Case, samples: dict[str, bytes], pairs: int = 20) -> dict[str, Any]:
    """What the HTTP path adds to one request (concurrency 1): the same request over HTTP
    (client, proxy, router) and straight to the model's deployment handle, alternating, one at a
    time; the difference of the two medians. The handle call still holds the replica's own work
    and Serve's hop to it, so this is what the proxy and the router add, nothing else."""
    from ray import serve

    handle = serve.get_deployment_handle(case.deployment, "stylefleet")
    files = {f: (f"{f}.jpg", samples[f], "image/jpeg") for f in case.files}
    over_http: list[float] = []
    direct: list[float] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(pairs):
            started = time.perf_counter()
            answer = client.post(f"/v1/styles/{case.style}", files=files, data=dict(case.fields))
            over_http.append(time.perf_counter() - started)
            if answer.status_code != 200:
                return {"http_path_error": answer.text[:200]}
            request = ModelRequest({}, dict(case.params), OutputSpec("png"), files={f: samples[f] for f in case.files})
            started = time.perf_counter()
            handle.remote(request).result()
            direct.append(time.perf_counter() - started)
    http_p50, handle_p50 = statistics.median(over_http) * 1000, statistics.median(direct) * 1000
    return {
        "http_p50_ms": round(http_p50, 1),
        "handle_p50_ms": round(handle_p50, 1),
        "http_path_ms": round(http_p50 - handle_p50, 1),
    }


def level_requests(requested: int, concurrency: int) -> int:
    """Requests for one level: at least six rounds of ``concurrency``, so that the steady window
    (all but the first and last round, ``bench_load.steady_rate``) holds four."""
    return max(requested, 6 * concurrency) if concurrency > 1 else requested


def saturated_ips(row: dict[str, Any]) -> float:
    """The level's rate with every client busy (``steady_ips``), or over the whole run where the
    run was too short to have such a window."""
    steady = row.get("steady_ips")
    return float(steady) if steady else float(row["ips"])


def _print_level(deployment: str, row: dict[str, Any], label: str = "") -> None:
    rss = ", ".join(f"{r['rss_mib']} MiB" for r in row.get("rss", []))
    print(
        f"  served {deployment:<18}{label} conc {row['concurrency']:>2}: {row['ips']:6.2f} img/s"
        f"{' (steady ' + format(row['steady_ips'], '.2f') + ')' if row.get('steady_ips') else ''}  p50 {row['p50_ms']:7.1f} ms  "
        f"p95 {row['p95_ms']:7.1f} ms  mean batch {row['mean_batch_size']:4.2f}  CPU {row['machine_cpu_utilisation']:.0%} "
        f"(model {row['model_replicas_cpu_share']:.0%})  RSS {rss}"
        f"{'  overhead ' + str(row['overhead_ms']) + ' ms' if 'overhead_ms' in row else ''}"
        f"{_http_path_text(row)}"
        f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
        flush=True,
    )


def _http_path_text(row: dict[str, Any]) -> str:
    text = ""
    if "http_path_ms" in row:
        text += f"  HTTP path {row['http_path_ms']} ms (p50 over HTTP {row['http_p50_ms']}, to the handle {row['handle_p50_ms']})"
    if "small_http_path_ms" in row:
        text += (
            f"; at {SMALL_SIDE} px {row['small_http_path_ms']} ms "
            f"({row['small_http_p50_ms']} over HTTP, {row['small_handle_p50_ms']} to the handle)"
        )
    return text


def _set_batching(cluster: Any, config: dict[str, Any], deployment: str, **changes: Any) -> None:
    """Change a deployment's user_config live (Serve calls reconfigure; no restart) and wait."""
    for entry in config["applications"][0].get("deployments", []):
        if entry["name"] == deployment:
            entry["user_config"] = {**entry.get("user_config", {}), **changes}
    cluster.deploy(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(all(i.get(k) == v for k, v in changes.items()) for i in replica_infos(deployment)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} did not take {changes}")


def main(args: argparse.Namespace) -> int:
    from stylefleet.tools.local import LocalCluster, choose_ingress, free_port

    samples = _samples()
    results: dict[str, Any] = {"machine": _machine(), "config": args.config, "models": {}}
    out = Path(args.out)
    if args.sessions:
        from stylefleet.imageio import decode as decode_image
        from stylefleet.tools import bench_sessions

        print(f"== ONNX Runtime session options, batch {args.batch_sizes}, {args.rounds} alternating rounds", flush=True)
        photo = decode_image(samples["image"], max_pixels=10**8).pixels
        results["sessions"] = bench_sessions.sweep(photo, [int(x) for x in args.batch_sizes.split(",")], args.rounds, args.seconds)
        _write(out, results)
        return 0

    serve_file = load_serve_file(args.config)
    spec = serve_file.app
    config = copy.deepcopy(serve_file.document)  # deployed, with the benchmark's port and live batching changes
    only = {s for s in args.only.split(",") if s}
    cases = [c for c in _cases(spec) if not only or c.deployment in only]
    idphoto_cases = [c for c in _idphoto_cases(spec) if not only or c.deployment in only]
    idphoto_levels = [int(x) for x in args.idphoto_concurrency.split(",") if x]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]

    ranked_setups: dict[str, list[tuple[float, str, int]]] = {}
    print(f"== bare, in-process, {args.threads or 'all'} threads (astronaut 512x512 JPEG; restyle uses the cat as style)", flush=True)
    for case in cases:
        rows, ranked_setups[case.deployment] = bare(case, spec.model_spec(case.deployment), samples, batch_sizes, args.threads)
        results["models"][case.deployment] = {"style": case.style, "bare": rows}
    for case in idphoto_cases:
        results["models"][case.deployment] = {
            "style": case.style,
            "params": case.params,
            "bare": idphoto_bare(case, spec, samples, args.threads),
        }

    port = free_port()
    config["http_options"]["port"] = port
    try:
        ingress = choose_ingress(args.ingress, serve_file.direct_ingress_blocker())
    except ValueError as exc:
        raise SystemExit(f"stylefleet bench: {exc}") from None
    results["ingress"] = ingress
    # log_to_driver off: keep replica access logs out of the figures
    cluster = LocalCluster(log_to_driver=False, http_port=port, ingress=ingress)
    cluster.start()
    try:
        cluster.deploy(config)
        url = f"http://127.0.0.1:{port}"
        print(f"== served over HTTP ({url}, {ingress} ingress)", flush=True)
        results["get_styles"] = get_styles_latency(url)
        for case in cases:
            model = results["models"][case.deployment]
            fastest = max(r["fastest_model_only_ips"] for r in model["bare"])
            end_to_end = max(r["end_to_end_ips"] for r in model["bare"])
            rows = []
            for c in levels:
                profile_s = args.profile_seconds if c == levels[-1] else 0.0
                row = measured_level(url, case, samples, c, level_requests(args.requests, c), args.seconds, profile_s)
                rate = saturated_ips(row)
                row["served_over_bare_fastest"] = round(rate / fastest, 2) if fastest else None
                row["served_over_bare_end_to_end"] = round(rate / end_to_end, 2) if end_to_end else None
                rows.append(row)
                _print_level(case.deployment, row)
            model["served"] = rows
            # The most served/bare-fastest any server could show here: the in-process pipeline
            # (decode, model, encode; no HTTP, no client) over the network alone.
            model["ceiling"] = round(end_to_end / fastest, 2) if fastest else None
            top = rows[-1]
            turns = ""
            if args.turns > 0:
                build = functools.partial(BareProbe, case, spec.model_spec(case.deployment), samples, threads=args.threads)
                contenders = bare_contenders(ranked_setups[case.deployment], spec.batching_of(case.deployment).max_batch_size)
                model["in_turns"] = served_in_turns(url, case, samples, build, contenders, top["concurrency"], args)
                turns = f"{model['in_turns']['served_over_bare_fastest']} in turns (after the sweep: {top['served_over_bare_fastest']})"
            print(
                f"  => {case.deployment} at saturation (conc {top['concurrency']}): served/bare-fastest "
                f"{turns or top['served_over_bare_fastest']} "
                f"(ceiling: bare end-to-end/bare-fastest {model['ceiling']}), "
                f"served/bare-end-to-end {top['served_over_bare_end_to_end']}, mean batch {top['mean_batch_size']}",
                flush=True,
            )
        if args.compare and cases:
            results["queues"] = compare_queues(cluster, config, url, cases, samples, levels[-1], args)
            if len(cases) > 1:
                results["two_styles"] = two_styles(
                    url, cases[:1] + [c for c in cases if c.deployment == "remove-background"][:1], samples, levels[-1], args, results
                )
        for case in idphoto_cases:
            rows = []
            for c in idphoto_levels:
                before = _idphoto_counters(case, spec)
                row = asyncio.run(_served_level(url, case, samples, c, max(args.requests, 2 * c), args.seconds))
                row["stage_share"] = _shares(before, _idphoto_counters(case, spec))
                rows.append(row)
                print(
                    f"  served {case.deployment:<18} conc {c:>2}: {row['ips']:6.2f} photos/s  p50 {row['p50_ms']:7.1f} ms  "
                    f"p95 {row['p95_ms']:7.1f} ms  stages {row['stage_share']}"
                    f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
                    flush=True,
                )
            results["models"][case.deployment]["served"] = rows
        if args.rembg:
            from stylefleet.tools import bench_rembg

            case = next(c for c in _cases(spec) if c.deployment == "remove-background")
            results["rembg"] = bench_rembg.compare(args.rembg, url, case, samples, args.rembg_rounds, args.seconds)
        if args.soak_minutes > 0:
            results["soak"] = soak(url, spec, args.soak_style, samples, args.soak_minutes)
    finally:
        cluster.stop()
    _write(out, results)
    return 0


def served_in_turns(
    url: str,
    case: Case,
    samples: dict[str, bytes],
    build: Callable[[str, int], BareProbe],
    contenders: list[tuple[float, str, int]],
    concurrency: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """served/bare-fastest with the two in turns (``bench_load.in_turns``): the fastest bare setup
    in this process while the service idles beside it, then a saturated served level, and so on.
    A bare turn times each of ``contenders`` (images/s, setup, batch size: ``bare_contenders``,
    the sweep's leaders and the replica's own setup) and takes the fastest: the sweep's maximum
    alone is a noisy pick and can name a setup slower than the one the replica runs, which would
    flatter the ratio. Also what else used the machine during the bare turns (the idle service:
    Ray, Serve, replicas) and the load client's (this process's) share of the machine during the
    served ones."""
    cores = psutil.cpu_count() or 1
    others: list[float] = []
    client: list[float] = []
    winners: list[str] = []
    probes = []
    try:
        for _, setup, batch in contenders:
            probes.append(build(setup, batch))

        def bare_turn() -> float:
            usage, own = Usage([]), time.process_time()
            usage.start()
            rates = [p.rate() for p in probes]
            busy = usage.stop()["machine_cpu_utilisation"]
            wall = usage.wall_s
            others.append(max(0.0, busy - (time.process_time() - own) / (wall * cores)))
            best = probes[rates.index(max(rates))]
            winners.append(f"{best.setup}, batch {best.batch_size}")
            return max(rates)

        def served_turn() -> float:
            own, t0 = time.process_time(), time.perf_counter()
            row = asyncio.run(_served_level(url, case, samples, concurrency, level_requests(args.requests, concurrency), args.seconds))
            client.append((time.process_time() - own) / ((time.perf_counter() - t0) * cores))
            return saturated_ips(row)

        result = in_turns(bare_turn, served_turn, args.turns)
    finally:
        for p in probes:
            p.close()
    result.update(
        bare_contenders=[f"{setup}, batch {batch}" for _, setup, batch in contenders],
        bare_winners=winners,
        concurrency=concurrency,
        machine_share_of_others_in_bare_turns=round(statistics.median(others), 3),
        machine_share_of_client_in_served_turns=round(statistics.median(client), 3),
    )
    print(
        f"  in turns {case.deployment:<16} bare (fastest of {result['bare_contenders']}) {result['bare_ips']} img/s, "
        f"served (conc {concurrency}) {result['served_ips']} img/s: ratios {result['ratios']}; "
        f"idle service {result['machine_share_of_others_in_bare_turns']:.0%} of the machine in bare turns, "
        f"load client {result['machine_share_of_client_in_served_turns']:.0%} in served turns",
        flush=True,
    )
    return result


def get_styles_latency(url: str, requests: int = 50) -> dict[str, float]:
    """``GET /v1/styles`` one at a time: p50/p95 in ms (the catalogue every client reads first)."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/v1/styles")
        for _ in range(requests):
            t0 = time.perf_counter()
            client.get("/v1/styles").raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    q = np.percentile(times, [50, 95])
    print(f"  GET /v1/styles: p50 {q[0]:.1f} ms, p95 {q[1]:.1f} ms ({requests} requests)", flush=True)
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1)}


QUEUE_FIGURES = ("ips", "steady_ips", "p50_ms", "p95_ms", "mean_batch_size", "machine_cpu_utilisation", "model_replicas_cpu_share")


def compare_queues(
    cluster: Any, config: dict[str, Any], url: str, cases: list[Case], samples: dict[str, bytes], concurrency: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The same saturating load through Serve's @serve.batch and through the backlog queue, in
    ``--queue-rounds`` passes, every other one reversed (``balanced_order``), so that the host's
    drift does not favour whichever row runs first; each row's figures are medians over its rounds."""
    rounds = args.queue_rounds
    print(
        f"== batch queue at concurrency {concurrency}: @serve.batch vs the backlog queue (same replica, live user_config), "
        f"{rounds} round{'s' if rounds > 1 else ''}, every other one in reverse order",
        flush=True,
    )
    rows = []
    for case in cases:
        entry = next((e for e in config["applications"][0].get("deployments", []) if e["name"] == case.deployment), None)
        if entry is None:
            continue
        shipped = dict(entry.get("user_config", {}))
        setups = [("serve-batch", 0.0), ("serve-batch", 0.02), ("backlog", BatchingConfig.model_validate(shipped).batch_wait_timeout_s)]
        measured: list[list[dict[str, Any]]] = [[] for _ in setups]
        current: int | None = None
        for r, index in balanced_order(len(setups), rounds):
            queue, wait = setups[index]
            if index != current:
                _set_batching(cluster, config, case.deployment, queue=queue, batch_wait_timeout_s=wait)
                current = index
            row = measured_level(url, case, samples, concurrency, level_requests(args.requests, concurrency), args.seconds)
            measured[index].append(row)
            _print_level(case.deployment, row, f" [{queue:<11} wait {wait:g}] round {r + 1}")
        _set_batching(cluster, config, case.deployment, **shipped, queue="backlog")
        summary = []
        for (queue, wait), runs in zip(setups, measured, strict=True):
            row = {"deployment": case.deployment, "queue": queue, "batch_wait_timeout_s": wait, "concurrency": concurrency}
            row.update(median_of_rounds(runs, QUEUE_FIGURES))
            row["rounds"] = runs
            rows.append(row)
            summary.append(f"{queue} wait {wait:g} {saturated_ips(row):.2f} img/s (batch {row['mean_batch_size']:.2f})")
        print(f"  => {case.deployment}, median of {rounds} round{'s' if rounds > 1 else ''}: " + " / ".join(summary), flush=True)
    return rows


def two_styles(
    url: str, cases: list[Case], samples: dict[str, bytes], concurrency: int, args: argparse.Namespace, results: dict[str, Any]
) -> dict[str, Any]:
    """Two styles on two models saturated at once: each one's throughput against alone."""
    names = " + ".join(c.deployment for c in cases)
    print(f"== two styles at once ({names}), concurrency {concurrency} each", flush=True)

    async def both() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(_served_level(url, c, samples, concurrency, max(args.requests, 2 * concurrency), args.seconds) for c in cases)
            )
        )

    rows = asyncio.run(both())
    out: dict[str, Any] = {"concurrency": concurrency, "styles": []}
    share_sum = 0.0
    for case, row in zip(cases, rows):
        alone = results["models"][case.deployment]["served"][-1]["ips"]
        share = row["ips"] / alone if alone else 0.0
        share_sum += share
        out["styles"].append({"deployment": case.deployment, "ips": row["ips"], "alone_ips": alone, "share_of_alone": round(share, 2)})
        print(f"  {case.deployment:<18} {row['ips']:6.2f} img/s together vs {alone:6.2f} alone ({share:.0%})", flush=True)
    out["sum_of_shares"] = round(share_sum, 2)
    print(f"  => sum of shares {share_sum:.2f} (1.0: the cores are shared without loss; below: an oversubscription cost)", flush=True)
    return out


def soak(url: str, spec: AppSpec, style: str, samples: dict[str, bytes], minutes: float) -> list[dict[str, Any]]:
    """Sustained saturating load on one style; every 30 s, each replica's RSS."""
    deployment = spec.args.styles[style].variant_list()[0].deployment
    print(f"== soak: {minutes:g} min of concurrency 32 on {style} ({deployment}); RSS every 30 s", flush=True)
    load = _case_load(url, Case(style, deployment, {}, ("image",)), samples)
    samples_out: list[dict[str, Any]] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < minutes * 60:
        row = asyncio.run(load.run(32, 10_000, min(30.0, minutes * 60 - elapsed)))
        infos = replica_infos(deployment)
        sample = {"minute": round((time.monotonic() - started) / 60, 2), "ips": row["ips"], "errors": row["errors"], "rss": _rss(infos)}
        samples_out.append(sample)
        print(
            f"  t={sample['minute']:5.2f} min  {row['ips']:6.2f} img/s  RSS " + ", ".join(f"{r['rss_mib']} MiB" for r in sample["rss"]),
            flush=True,
        )
    return samples_out


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def _machine() -> dict[str, Any]:
    import os
    import platform

    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
