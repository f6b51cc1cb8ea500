"""``python -m stylefleet.tools.chaos CASE``: one chaos case, or ``all`` of the real ones."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from stylefleet.tools.chaos import dead_ray, memory, slow_clients, storage


def _held(case: str, result: Any) -> bool:
    if case == "dead-ray":
        return all(r.get("held") for r in result.values())
    if case == "storage":
        return result == 0  # the number of properties broken
    if case == "slow-clients":
        return slow_clients.slow_clients_held(result)
    return bool(result.get("ok"))


def _run(case: str, args: argparse.Namespace) -> Any:
    if case == "memory":
        return memory.memory(args.config, args.requests, args.side)
    if case == "dead-ray":
        return dead_ray.dead_ray(args.config, tuple(args.process or dead_ray.DEAD_RAY_PROCESSES))
    if case == "storage":
        return storage.storage()
    if case == "slow-clients":
        return slow_clients.slow_clients(
            args.config, url=args.url, addresses=args.addresses, per_address=args.per_address,
            byte_every_s=args.byte_every_s, duration_s=args.duration_s,
        )
    raise ValueError(case)


REAL_CASES = ("memory", "slow-clients", "dead-ray", "storage")  # what `all` (make chaos) runs, one after the other


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylefleet.tools.chaos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="case", required=True)
    pp = sub.add_parser("per-pixel", help="peak RSS growth per megapixel of one request, per model")
    pp.add_argument("models", nargs="*")
    one = sub.add_parser("measure-one", help="one model at one size (per-pixel runs each in a fresh process)")
    one.add_argument("model")
    one.add_argument("side", type=int)
    wu = sub.add_parser("warm-up", help="RSS and first-request latency with and without warm-up, per model")
    wu.add_argument("models", nargs="*")
    wone = sub.add_parser("warm-up-one", help="one model, warmed (1) or not (0)")
    wone.add_argument("model")
    wone.add_argument("warm", type=int)
    for name, text in (
        ("memory", "the shipped app under concurrent 4096 px requests"),
        ("slow-clients", "5 addresses x 64 trickling uploads; do probes and a normal style still answer?"),
        ("dead-ray", "SIGKILL the raylet, then the GCS, of a served config; report what held"),
        ("storage", "stylefleet batch over very long names, then into an output folder that cannot take a file"),
        ("all", "every real case above, one after the other (make chaos)"),
    ):
        mode = sub.add_parser(name, help=text)
        mode.add_argument("--config", default="serve_config.yaml")
        if name in ("memory", "all"):
            mode.add_argument(
                "--requests", type=int, default=16, help="memory: concurrent requests to each of frost, remove-background, id-photo"
            )
            mode.add_argument("--side", type=int, default=4096, help="memory: the photos' side in px")
        if name in ("slow-clients", "all"):
            mode.add_argument("--url", default=None, help="slow-clients: a running service instead of starting one")
            mode.add_argument("--addresses", type=int, default=5, help="slow-clients: loopback source addresses")
            mode.add_argument("--per-address", type=int, default=64, help="slow-clients: trickling uploads per address")
            mode.add_argument("--byte-every-s", type=float, default=5.0, help="slow-clients: one byte this often")
            mode.add_argument("--duration-s", type=float, default=45.0, help="slow-clients: how long the attack lasts")
        if name in ("dead-ray", "all"):
            mode.add_argument(
                "--process", choices=tuple(dead_ray.DEAD_RAY_PROCESSES), action="append", help="dead-ray: default both, one after the other"
            )
    args = parser.parse_args(argv)
    # Every `stylefleet run` a case starts imports this tree, whatever the current directory.
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[3]))
    if args.case == "per-pixel":
        memory.per_pixel(args.models or None)
        return 0
    if args.case == "warm-up":
        memory.warm_up_costs(args.models or ["u2netp", "multistyle26", "arbitrary"])
        return 0
    if args.case == "warm-up-one":
        print(json.dumps(memory.warm_up_one(args.model, bool(args.warm))))
        return 0
    if args.case == "measure-one":
        print(json.dumps(memory.measure_one(args.model, args.side)))
        return 0
    cases = REAL_CASES if args.case == "all" else (args.case,)
    held: dict[str, bool] = {}
    for case in cases:
        result = _run(case, args)
        print(json.dumps({case: result}, indent=2), flush=True)
        held[case] = _held(case, result)
    print("what held:", ", ".join(f"{case} {'yes' if ok else 'NO'}" for case, ok in held.items()), file=sys.stderr)
    return 0 if all(held.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
