"""``stylefleet bench served``: the service over HTTP against the fastest bare run on the same cores.

First the bare rows (``stylefleet.bench.bare``). Then it starts its own loopback-only Ray + Serve
from the config (on a free port) so the figures come from a known, otherwise idle service, and
per ONNX model: the served HTTP throughput at each concurrency, with p50/p95, the mean batch over
every replica, each replica's RSS at the start and end of the level, the machine's CPU
utilisation and the model replicas' share of it. At saturation it prints served/bare, also
measured in turns with the bare side; runs the same load through Serve's ``@serve.batch``
(``queue: serve-batch``) beside the backlog queue, and two styles at once. The composed
``id-photo`` pipeline: served photos per second and, from the replicas' own counters, the share
of the serving time each stage took. ``stylefleet bench rembg`` and ``stylefleet bench soak``
are this run with a pass of their own at the end.

A benchmark, not a test: it measures and prints, it asserts nothing. Every loop is bounded in
request count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from stylefleet.bench import bare
from stylefleet.bench.bare import BareProbe, bare_contenders
from stylefleet.bench.common import ExtraPass, ints, machine, rounds_arg, sample_photos, selected_cases, write
from stylefleet.bench.levels import (
    Usage,
    level_requests,
    measured_level,
    print_level,
    saturated_ips,
    served_level,
    set_batching,
)
from stylefleet.bench.load import Case, balanced_order, in_turns, median_of_rounds
from stylefleet.config import BatchingConfig
from stylefleet.spec import AppSpec, load_serve_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the served run; ``rembg`` and ``soak`` take them too."""
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--out", default="bench-results/bench.json")
    parser.add_argument("--batch-sizes", default="1,4,8", help="batch sizes of the bare runs")
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per served level (at least 2x concurrency)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per served level")
    parser.add_argument("--only", default="", help="comma-separated deployments to measure (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads for the bare runs (default: every core)")
    parser.add_argument("--idphoto-concurrency", default="16", help="served concurrency levels for the id-photo pipeline")
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
        "--queue-rounds", type=rounds_arg, default=2,
        help="passes of the serve-batch/backlog comparison, every other one in reverse order (an even count gives every row "
        "the same mean position); each row is the median of its rounds",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=0.0,
        help="py-spy each model replica this long at the top level, in a pass after its figures (needs the bench extra)",
    )


def main(args: argparse.Namespace, extra: Sequence[ExtraPass] = ()) -> int:
    """The bare rows, then the served run; ``extra`` passes run last, with the service still up."""
    from stylefleet.tools.local import LocalCluster, choose_ingress, free_port

    samples = sample_photos()
    results: dict[str, Any] = {"machine": machine(), "config": args.config, "models": {}}
    serve_file = load_serve_file(args.config)
    spec = serve_file.app
    config = copy.deepcopy(serve_file.document)  # deployed, with the benchmark's port and live batching changes
    cases, idphoto_cases = selected_cases(spec, args.only)
    levels = ints(args.concurrency)
    ranked_setups = bare.measure(spec, cases, idphoto_cases, samples, ints(args.batch_sizes), args.threads, results)

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
            saturate(url, case, spec, samples, levels, ranked_setups[case.deployment], args, results["models"][case.deployment])
        if args.compare and cases:
            results["queues"] = compare_queues(cluster, config, url, cases, samples, levels[-1], args)
            if len(cases) > 1:
                results["two_styles"] = two_styles(
                    url, cases[:1] + [c for c in cases if c.deployment == "remove-background"][:1], samples, levels[-1], args, results
                )
        for case in idphoto_cases:
            results["models"][case.deployment]["served"] = idphoto_served(url, case, spec, samples, ints(args.idphoto_concurrency), args)
        for run_pass in extra:
            key, value = run_pass(url, spec, samples)
            results[key] = value
    finally:
        cluster.stop()
    write(Path(args.out), results)
    return 0


def saturate(
    url: str,
    case: Case,
    spec: AppSpec,
    samples: dict[str, bytes],
    levels: list[int],
    ranked: list[tuple[float, str, int]],
    args: argparse.Namespace,
    model: dict[str, Any],
) -> None:
    """One model's served levels into ``model`` (its entry in the JSON), each against its bare rows,
    then served/bare at the top level in turns."""
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
        print_level(case.deployment, row)
    model["served"] = rows
    # The most served/bare-fastest any server could show here: the in-process pipeline
    # (decode, model, encode; no HTTP, no client) over the network alone.
    model["ceiling"] = round(end_to_end / fastest, 2) if fastest else None
    top = rows[-1]
    turns = ""
    if args.turns > 0:
        build = functools.partial(BareProbe, case, spec.model_spec(case.deployment), samples, threads=args.threads)
        contenders = bare_contenders(ranked, spec.batching_of(case.deployment).max_batch_size)
        model["in_turns"] = served_in_turns(url, case, samples, build, contenders, top["concurrency"], args)
        turns = f"{model['in_turns']['served_over_bare_fastest']} in turns (after the sweep: {top['served_over_bare_fastest']})"
    print(
        f"  => {case.deployment} at saturation (conc {top['concurrency']}): served/bare-fastest "
        f"{turns or top['served_over_bare_fastest']} "
        f"(ceiling: bare end-to-end/bare-fastest {model['ceiling']}), "
        f"served/bare-end-to-end {top['served_over_bare_end_to_end']}, mean batch {top['mean_batch_size']}",
        flush=True,
    )


def idphoto_served(
    url: str, case: Case, spec: AppSpec, samples: dict[str, bytes], levels: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The id-photo pipeline served at each level, with each stage's share of the replicas' time."""
    rows = []
    for c in levels:
        before = _idphoto_counters(case, spec)
        row = asyncio.run(served_level(url, case, samples, c, max(args.requests, 2 * c), args.seconds))
        row["stage_share"] = _shares(before, _idphoto_counters(case, spec))
        rows.append(row)
        print(
            f"  served {case.deployment:<18} conc {c:>2}: {row['ips']:6.2f} photos/s  p50 {row['p50_ms']:7.1f} ms  "
            f"p95 {row['p95_ms']:7.1f} ms  stages {row['stage_share']}"
            f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
            flush=True,
        )
    return rows


def served_in_turns(
    url: str,
    case: Case,
    samples: dict[str, bytes],
    build: Callable[[str, int], BareProbe],
    contenders: list[tuple[float, str, int]],
    concurrency: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """served/bare-fastest with the two in turns (``stylefleet.bench.load.in_turns``): the fastest bare setup
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
            row = asyncio.run(served_level(url, case, samples, concurrency, level_requests(args.requests, concurrency), args.seconds))
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
                set_batching(cluster, config, case.deployment, queue=queue, batch_wait_timeout_s=wait)
                current = index
            row = measured_level(url, case, samples, concurrency, level_requests(args.requests, concurrency), args.seconds)
            measured[index].append(row)
            print_level(case.deployment, row, f" [{queue:<11} wait {wait:g}] round {r + 1}")
        set_batching(cluster, config, case.deployment, **shipped, queue="backlog")
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
                *(served_level(url, c, samples, concurrency, max(args.requests, 2 * concurrency), args.seconds) for c in cases)
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
