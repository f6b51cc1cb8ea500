"""``stylefleet``: run the service locally, push folders through it, benchmark it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from stylefleet.spec import ConfigError, ServeFile, load_serve_file

logger = logging.getLogger("stylefleet")

# `stylefleet run`'s exit codes (docs/operations.md "When a Ray process dies").
EXIT_STOPPED = 0  # Ctrl-C or SIGTERM: Serve and Ray shut down in order
EXIT_NOT_STARTED = 1  # already running, a port taken, an invalid config, a failed deploy
EXIT_USAGE = 2  # a bad option (argparse), or --ingress direct for a config it cannot serve
EXIT_RAY_DIED = 3  # the raylet or the GCS died: every process of the session was stopped by pid


def _load(path: str, profile: str | None = None) -> ServeFile:
    """The config file, checked as a whole (``stylefleet.spec``) before anything starts."""
    try:
        return load_serve_file(path, profile)
    except ConfigError as exc:
        raise SystemExit(f"stylefleet: invalid config {path}: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from stylefleet.tools.local import AlreadyRunning, LocalCluster, choose_ingress
    from stylefleet.tools.supervise import Death

    config = _load(args.config)
    blocker = config.direct_ingress_blocker()
    try:
        ingress = choose_ingress(args.ingress, blocker)
    except ValueError as exc:
        print(f"stylefleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.ingress == "auto" and blocker:
        logger.info("Serve's proxy in front of the router: %s", blocker)
    cluster = LocalCluster(
        num_cpus=args.num_cpus,
        metrics_export_port=args.metrics_port,
        include_dashboard=args.dashboard,
        state_dir=Path(args.state_dir),
        http_port=config.http_port,
        ingress=ingress,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
    except AlreadyRunning as exc:
        print(f"stylefleet: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED

    def on_death(death: Death) -> None:
        """From the supervisor's thread, whatever the main thread is doing (waiting for Ctrl-C,
        or in a deploy that would never end): stop the session, then end this process at once
        (an orderly exit would call ray.shutdown, which waits on the dead process)."""
        print(f"stylefleet: {death.message()}", file=sys.stderr, flush=True)
        left = cluster.stop_dead(death.message())
        if left:
            print(f"stylefleet: these Ray processes would not stop: {sorted(left)}", file=sys.stderr)
        print(f"stylefleet: stopped (exit {EXIT_RAY_DIED})", file=sys.stderr, flush=True)
        sys.stdout.flush()
        logging.shutdown()
        os._exit(EXIT_RAY_DIED)

    try:
        cluster.watch(on_death)
        for failure in cluster.deploy(config.document, timeout_s=args.timeout, allow_degraded=True):
            logger.warning("serving without a failed deployment (its styles answer 503 model_unavailable): %s", failure)
        doors = f"the router itself; Serve's proxy on {config.http_host}:{cluster.proxy_port}" if ingress == "direct" else "Serve's proxy"
        print(
            f"stylefleet is serving on http://{config.http_host}:{config.http_port} ({doors}; "
            f"metrics: http://127.0.0.1:{args.metrics_port}/metrics). Ctrl-C stops it.",
            flush=True,
        )
        stop.wait()
    finally:
        print("stopping Ray...", flush=True)
        cluster.stop()
    return EXIT_STOPPED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylefleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a local loopback-only Ray and serve a config in the foreground")
    run.add_argument("config", nargs="?", default="serve_config.yaml")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port on 127.0.0.1")
    run.add_argument(
        "--no-dashboard", dest="dashboard", action="store_false",
        help="skip Ray's dashboard (127.0.0.1:8265, token-protected; it carries Serve's REST API for `serve deploy`)",
    )
    run.add_argument("--state-dir", default=".stylefleet", help="where the private Ray token is kept")
    run.add_argument("--timeout", type=float, default=600, help="seconds to wait for the app to be RUNNING")
    run.add_argument(
        "--ingress", choices=("auto", "direct", "proxy"), default="auto",
        help="who answers on the config's port: the router replica itself (direct: one hop less per request), "
        "or Serve's proxy (needed to add applications at run time); auto: direct for one application with one "
        "router replica (docs/operations.md 'Direct ingress')",
    )
    run.set_defaults(func=cmd_run)

    from stylefleet.bench import cli as bench_cli
    from stylefleet.tools.batch import run as batch_mod

    batch = sub.add_parser(
        "batch",
        help="apply a style to every image of a folder (or list file), with progress and resume",
        description=batch_mod.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch_mod.add_arguments(batch)
    batch.set_defaults(func=batch_mod.main)
    from stylefleet.tools import k8s as k8s_mod

    bench_cli.add_parser(sub)  # `stylefleet bench MODE`: stylefleet/bench/cli.py

    k8s = sub.add_parser("k8s", help="regenerate k8s/ (RayService, PodMonitor, Grafana dashboard) from the config")
    k8s_mod.add_arguments(k8s)
    k8s.set_defaults(func=lambda a: k8s_mod.main(a))

    quantize = sub.add_parser(
        "quantize",
        help="build the derived (int8) weights into the model cache and verify them; --check only verifies",
        description="Builds each derived model the registry lists (u2netp_int8) from its fp32 file, no download, "
        "into the cache folder ($STYLEFLEET_MODEL_CACHE, else --model-dir, else ~/.cache/stylefleet/models), "
        "and prints path, sha256 and seconds. A file already there with the registry's sha256 is kept.",
    )
    quantize.add_argument("--cache-dir", default=None, help="where the derived files go (default: see above)")
    quantize.add_argument("--model-dir", default=None, help="the config's model_dir: where the fp32 sources are looked for first")
    quantize.add_argument("--check", action="store_true", help="build nothing: exit 1 unless every derived file is cached and verified")
    quantize.set_defaults(func=cmd_quantize)

    config = sub.add_parser("config", help="validate a serve config (+ profile) and print the merged result")
    config.add_argument("config", nargs="?", default="serve_config.yaml")
    config.add_argument("--profile", default=None, help="e.g. profiles/gpu.yaml")
    config.set_defaults(func=cmd_config)
    return parser


def cmd_config(args: argparse.Namespace) -> int:
    try:
        merged = load_serve_file(args.config, args.profile)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(merged.document, sort_keys=False), end="")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import time

    from stylefleet.deployments import quantize
    from stylefleet.errors import ModelUnavailable

    folder = Path(args.cache_dir).expanduser() if args.cache_dir else quantize.cache_dir(args.model_dir)
    failed = 0
    for name in quantize.derived_names():
        started = time.perf_counter()
        if args.check:
            path, digest = quantize.check(name, folder)
            if digest is None:
                failed += 1
                print(f"{name}: {path} is missing or not the registry's build; run `stylefleet quantize`", file=sys.stderr)
            else:
                print(f"{name}\t{path}\t{digest}\tverified in {time.perf_counter() - started:.1f} s")
            continue
        try:
            model = quantize.ensure(name, folder, model_dir=args.model_dir)
        except ModelUnavailable as exc:
            failed += 1
            print(f"{name}: {exc.message}", file=sys.stderr)
            continue
        print(f"{name}\t{model.path}\t{model.sha256}\t{time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the figures
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
