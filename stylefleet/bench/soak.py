"""``stylefleet bench soak``: the served run, then a sustained load on one style with each replica's RSS
every 30 s (does a replica's memory stay flat under hours of traffic?)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from stylefleet.bench.common import ExtraPass
from stylefleet.bench.levels import case_load, replica_infos, rss_of
from stylefleet.bench.load import Case
from stylefleet.spec import AppSpec


def soak(url: str, spec: AppSpec, style: str, samples: dict[str, bytes], minutes: float) -> list[dict[str, Any]]:
    """Sustained saturating load on one style; every 30 s, each replica's RSS."""
    deployment = spec.args.styles[style].variant_list()[0].deployment
    print(f"== soak: {minutes:g} min of concurrency 32 on {style} ({deployment}); RSS every 30 s", flush=True)
    load = case_load(url, Case(style, deployment, {}, ("image",)), samples)
    samples_out: list[dict[str, Any]] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < minutes * 60:
        row = asyncio.run(load.run(32, 10_000, min(30.0, minutes * 60 - elapsed)))
        infos = replica_infos(deployment)
        sample = {"minute": round((time.monotonic() - started) / 60, 2), "ips": row["ips"], "errors": row["errors"], "rss": rss_of(infos)}
        samples_out.append(sample)
        print(
            f"  t={sample['minute']:5.2f} min  {row['ips']:6.2f} img/s  RSS " + ", ".join(f"{r['rss_mib']} MiB" for r in sample["rss"]),
            flush=True,
        )
    return samples_out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to hold the load")
    parser.add_argument("--style", default="frost", help="the style the soak loads")
    # The shipped soak: one model, one served level, no comparisons, before the sustained load.
    parser.set_defaults(only="stylize", compare=False, batch_sizes="4", concurrency="16", turns=0, out="bench-results/soak.json")


def soak_pass(args: argparse.Namespace) -> ExtraPass:
    """The served run's extra pass: ``(url, spec, samples) -> ("soak", samples over time)``."""

    def run(url: str, spec: AppSpec, samples: dict[str, bytes]) -> tuple[str, Any]:
        return "soak", soak(url, spec, args.style, samples, args.minutes)

    return run
