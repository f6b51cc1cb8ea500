"""``stylefleet bench``: bare in-process throughput vs served HTTP throughput, per model.

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
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from deployments.batching import ModelRequest, OutputSpec, encode_outcomes, run_batch
from deployments.kinds import KINDS
from deployments.onnx_session import RuntimeOptions
from deployments.registry import resolve
from stylefleet.imageio import decode, encode


@dataclass(frozen=True)
class Case:
    style: str  # served style name
    deployment: str
    params: dict[str, Any]
    files: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--out", default="bench-results/bench.json")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per served level (at least 2x concurrency)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per served level")
    parser.add_argument("--only", default="", help="comma-separated deployments to measure (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads for the bare runs (default: as configured)")
    parser.add_argument("--idphoto-concurrency", default="16", help="served concurrency levels for the id-photo pipeline")


def _samples() -> dict[str, bytes]:
    from skimage import data

    return {
        "image": encode(np.ascontiguousarray(data.astronaut()), "jpeg", 95),
        "style_image": encode(np.ascontiguousarray(data.chelsea()), "jpeg", 95),
    }


def _cases(config: dict[str, Any]) -> list[Case]:
    """One case per deployment: its first single-variant style, with that style's fixed params."""
    args = config["applications"][0]["args"]
    cases = []
    for name, dep in args["deployments"].items():
        kind = KINDS[dep["model"]]
        style = next((s for s, c in args["styles"].items() if c.get("deployment") == name), None)
        if style is not None and not kind.composed:
            cases.append(Case(style=style, deployment=name, params=args["styles"][style].get("params", {}), files=kind.image_fields))
    return cases


IDPHOTO_PARAMS = {"size": "passport", "format": "jpeg"}


def _idphoto_cases(config: dict[str, Any]) -> list[Case]:
    args = config["applications"][0]["args"]
    return [
        Case(style=style, deployment=c["deployment"], params=IDPHOTO_PARAMS, files=("image",))
        for style, c in args["styles"].items()
        if args["deployments"][c["deployment"]]["model"] == "id-photo"
    ]


def idphoto_bare(case: Case, app_args: dict[str, Any], samples: dict[str, bytes], threads: int | None, repeats: int = 5) -> dict[str, Any]:
    """Each stage of the pipeline on one photo, in this process: median seconds and shares."""
    from deployments.idphoto import IdPhotoModel

    uses = app_args["deployments"][case.deployment]["uses"]
    roles = {}
    for role, target in uses.items():
        dep = app_args["deployments"][target]
        kind = KINDS[dep["model"]]
        runtime = RuntimeOptions(threads=threads or dep.get("threads") or max(1, int(dep.get("num_cpus", 1))))
        roles[role] = kind.factory([resolve(f) for f in kind.files], runtime, {})
    pipeline = IdPhotoModel()
    output = OutputSpec(IDPHOTO_PARAMS["format"])  # type: ignore[arg-type]
    params = {k: v for k, v in IDPHOTO_PARAMS.items() if k != "format"}
    times: dict[str, list[float]] = {"decode": [], "matte": [], "face": [], "compose": [], "encode": []}
    for i in range(repeats + 1):  # the first round warms up
        lap: dict[str, float] = {}
        t0 = time.perf_counter()
        pixels = decode(samples["image"], max_pixels=10**8).pixels
        lap["decode"] = time.perf_counter() - t0
        prepared = pipeline.prepare(ModelRequest({"image": pixels}, dict(params), output))
        subs = pipeline.calls(prepared)
        replies = {}
        for role, stage in (("matte", "matte"), ("faces", "face")):
            t0 = time.perf_counter()
            [replies[role]] = run_batch(roles[role], [subs[role]])
            lap[stage] = time.perf_counter() - t0
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


def _idphoto_counters(case: Case, app_args: dict[str, Any]) -> dict[str, float]:
    """Seconds spent so far per stage, from the replicas: the used deployments' batches, the composer's stages."""
    from ray import serve

    uses = app_args["deployments"][case.deployment]["uses"]
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


def _median_rate(fn, images: int, repeats: int = 5, budget_s: float = 20.0) -> float:
    times = []
    deadline = time.monotonic() + budget_s
    fn()  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    return images / statistics.median(times)


def bare(case: Case, dep: dict[str, Any], samples: dict[str, bytes], batch_sizes: list[int], threads: int | None) -> list[dict[str, Any]]:
    kind = KINDS[dep["model"]]
    runtime = RuntimeOptions(threads=threads or dep.get("threads") or max(1, int(dep.get("num_cpus", 1))))
    model = kind.factory([resolve(f) for f in kind.files], runtime, {})
    fixed = case.params
    rows = []
    for b in batch_sizes:
        decoded = {f: decode(samples[f], max_pixels=10**8).pixels for f in case.files}
        requests = [ModelRequest(dict(decoded), dict(fixed)) for _ in range(b)]
        prepared = [model.prepare(r) for r in requests]
        model_only = _median_rate(lambda: model.infer(prepared), b)

        def end_to_end() -> None:
            reqs = [
                ModelRequest({f: decode(samples[f], max_pixels=10**8).pixels for f in case.files}, dict(fixed), OutputSpec("png"))
                for _ in range(b)
            ]
            encode_outcomes(reqs, run_batch(model, reqs), "")

        rows.append({"batch_size": b, "model_only_ips": round(model_only, 2), "end_to_end_ips": round(_median_rate(end_to_end, b), 2)})
        print(f"  bare {case.deployment:<18} batch {b}: model {model_only:7.2f} img/s, end-to-end {rows[-1]['end_to_end_ips']:7.2f} img/s", flush=True)
    return rows


async def _served_level(url: str, case: Case, samples: dict[str, bytes], concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + cap_s
    files = {f: (f"{f}.jpg", samples[f], "image/jpeg") for f in case.files}

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one() -> None:
            nonlocal errors
            async with sem:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                r = await client.post(f"/v1/styles/{case.style}", files=files, data=case.params)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        wall = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95]) if latencies else [float("nan")] * 2
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + errors,
        "errors": errors,
        "ips": round(len(latencies) / wall, 2),
        "p50_ms": round(float(q[0]) * 1000, 1),
        "p95_ms": round(float(q[1]) * 1000, 1),
    }


def _batch_sizes(deployment: str) -> dict[int, int]:
    from ray import serve

    info = serve.get_deployment_handle(deployment, "stylefleet").info.remote().result()
    return {int(k): int(v) for k, v in info["batch_sizes"].items()}


def _mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    batches = sum(diff.values())
    return round(sum(k * v for k, v in diff.items()) / batches, 2) if batches else 0.0


def main(args: argparse.Namespace) -> int:
    from stylefleet.local import LocalCluster, free_port

    config = yaml.safe_load(Path(args.config).read_text())
    app_args = config["applications"][0]["args"]
    only = {s for s in args.only.split(",") if s}
    cases = [c for c in _cases(config) if not only or c.deployment in only]
    idphoto_cases = [c for c in _idphoto_cases(config) if not only or c.deployment in only]
    idphoto_levels = [int(x) for x in args.idphoto_concurrency.split(",") if x]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    samples = _samples()
    results: dict[str, Any] = {"machine": _machine(), "config": args.config, "models": {}}

    print("== bare, in-process (astronaut 512x512; restyle uses the cat as style)", flush=True)
    for case in cases:
        results["models"][case.deployment] = {"style": case.style, "bare": bare(case, app_args["deployments"][case.deployment], samples, batch_sizes, args.threads)}
    for case in idphoto_cases:
        results["models"][case.deployment] = {"style": case.style, "params": case.params, "bare": idphoto_bare(case, app_args, samples, args.threads)}

    port = free_port()
    config["http_options"]["port"] = port
    cluster = LocalCluster(log_to_driver=False)  # keep replica access logs out of the figures
    cluster.start()
    try:
        cluster.deploy(config)
        url = f"http://127.0.0.1:{port}"
        print(f"== served over HTTP ({url})", flush=True)
        for case in cases:
            rows = []
            best_bare = max(r["end_to_end_ips"] for r in results["models"][case.deployment]["bare"])
            for c in levels:
                before = _batch_sizes(case.deployment)
                row = asyncio.run(_served_level(url, case, samples, c, max(args.requests, 2 * c), args.seconds))
                row["mean_batch_size"] = _mean_batch(before, _batch_sizes(case.deployment))
                row["served_over_bare"] = round(row["ips"] / best_bare, 2) if best_bare else None
                rows.append(row)
                print(
                    f"  served {case.deployment:<18} conc {c:>2}: {row['ips']:6.2f} img/s  p50 {row['p50_ms']:7.1f} ms  "
                    f"p95 {row['p95_ms']:7.1f} ms  mean batch {row['mean_batch_size']:4.2f}  served/bare {row['served_over_bare']}"
                    f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
                    flush=True,
                )
            results["models"][case.deployment]["served"] = rows
        for case in idphoto_cases:
            rows = []
            for c in idphoto_levels:
                before = _idphoto_counters(case, app_args)
                row = asyncio.run(_served_level(url, case, samples, c, max(args.requests, 2 * c), args.seconds))
                row["stage_share"] = _shares(before, _idphoto_counters(case, app_args))
                rows.append(row)
                print(
                    f"  served {case.deployment:<18} conc {c:>2}: {row['ips']:6.2f} photos/s  p50 {row['p50_ms']:7.1f} ms  "
                    f"p95 {row['p95_ms']:7.1f} ms  stages {row['stage_share']}"
                    f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
                    flush=True,
                )
            results["models"][case.deployment]["served"] = rows
    finally:
        cluster.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


def _machine() -> dict[str, Any]:
    import os
    import platform

    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
