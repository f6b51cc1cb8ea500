"""How a replica's ONNX sessions should hold their arenas: speed and memory, measured.

    .venv/bin/python -m stylefleet.bench.arena [MODEL ...] [--seconds S] [--rounds R]

Three layouts, each with two one-thread calls at once as the CPU default runs them:

- ``shared``: one session, both calls in it at once (one arena; what replicas ran before a session per call);
- ``pooled``: one session per call, memory patterns on;
- ``pooled, no patterns``: one session per call, memory patterns off.

Memory: each layout in a process of its own (an arena never shrinks), warmed as a replica warms
(``onnx_session.warm``: batches 4, 3, 2, 1, twice; the shared one runs the same calls from two
threads at once), then ``S`` seconds of calls at random batch sizes (4 seven times in ten, else 3,
2 or 1) from both threads; RSS after the warm-up and its range under the load. Speed: the
layouts built side by side in one process, batches of 4 from both threads, timed in turns
(A B C A B C ...) for ``S`` seconds each, median of ``R`` rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from stylefleet.deployments.onnx_session import Network, RuntimeOptions, make_network, run, warm, with_symbolic_batch
from stylefleet.deployments.params import style_weights
from stylefleet.deployments.registry import resolve

LAYOUTS = {
    "shared": RuntimeOptions(threads=1, calls=1),
    "pooled": RuntimeOptions(threads=1, calls=2),
    "pooled, no patterns": RuntimeOptions(threads=1, calls=2, mem_pattern=False),
}
SIZES = (1, 2, 3, 4)
Feeds = Callable[[int], dict[str, np.ndarray]]


def feeds_for(model: str, network: Network) -> Feeds:
    """Random inputs of the shapes the replica runs: 512 px for multistyle26, the fixed sides for the others."""
    rng = np.random.default_rng(0)
    names = [i.name for i in network.get_inputs()]
    if model == "multistyle26":
        weights = style_weights("7")
        return lambda n: {"image": rng.random((n, 3, 512, 512), dtype=np.float32), "style_weights": weights}
    if model == "u2netp":
        return lambda n: {names[0]: rng.random((n, 3, 320, 320), dtype=np.float32)}
    if model == "arbitrary_transform":
        return lambda n: {
            names[0]: rng.random((n, 384, 384, 3), dtype=np.float32),
            names[1]: rng.random((n, 1, 1, 100), dtype=np.float32),
        }
    raise SystemExit(f"unknown model {model!r}: multistyle26, u2netp or arbitrary_transform")


def rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


def on_two_threads(fn: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def call(network: Network, layout: str, feeds: dict[str, np.ndarray]) -> None:
    """A call as the layout runs it: ``shared`` straight into its one session, from any thread."""
    if layout == "shared":
        network.sessions[0].run(None, feeds)
    else:
        run(network, feeds)


def memory(model: str, layout: str, seconds: float) -> dict[str, object]:
    """One layout in this process: RSS after the warm-up and under random batch sizes."""
    options = LAYOUTS[layout]
    network = make_network(with_symbolic_batch(resolve(model).path), options)
    feeds = feeds_for(model, network)
    if options.calls == 1:

        def warm_shared(_: int) -> None:
            for _round in range(2):
                for n in sorted(SIZES, reverse=True):
                    call(network, layout, feeds(n))

        on_two_threads(warm_shared)
    else:
        warm(network, feeds, SIZES)
    warmed = rss_mib()
    stop = time.monotonic() + seconds
    samples: list[int] = []

    def load(i: int) -> None:
        pick = random.Random(i)
        while time.monotonic() < stop:
            call(network, layout, feeds(pick.choices(SIZES, [1, 1, 1, 7])[0]))

    def sample() -> None:
        while time.monotonic() < stop:
            samples.append(rss_mib())
            time.sleep(2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    on_two_threads(load)
    sampler.join()
    return {"warmed_mib": warmed, "load_min_mib": min(samples), "load_max_mib": max(samples + [rss_mib()])}


def speed(model: str, seconds: float, rounds: int) -> dict[str, float]:
    """Images/s of batches of 4 from both threads, each layout in turn, median of ``rounds``."""
    networks = {name: make_network(with_symbolic_batch(resolve(model).path), options) for name, options in LAYOUTS.items()}
    feeds = {name: feeds_for(model, net) for name, net in networks.items()}
    batch = {name: feeds[name](4) for name in networks}
    for name in networks:  # first calls plan the shapes
        rate(networks[name], name, batch[name], 0.0)
    rates: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(rounds):
        for name in networks:
            rates[name].append(rate(networks[name], name, batch[name], seconds))
    return {name: round(statistics.median(r), 2) for name, r in rates.items()}


def rate(network: Network, layout: str, batch: dict[str, np.ndarray], seconds: float) -> float:
    """Images/s of calls of ``batch`` from both threads for ``seconds`` (at least one call each)."""
    done = [0, 0]
    started = time.perf_counter()

    def calls(i: int) -> None:
        while done[i] == 0 or time.perf_counter() - started < seconds:
            call(network, layout, batch)
            done[i] += 1

    on_two_threads(calls)
    return len(next(iter(batch.values()))) * sum(done) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["multistyle26", "arbitrary_transform", "u2netp"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-of", nargs=2, metavar=("MODEL", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        model, layout = args.memory_of
        print(json.dumps(memory(model, layout, args.seconds)))
        return
    for model in args.models:
        rates = speed(model, args.seconds / 4, args.rounds)
        best = max(rates.values())
        for layout in LAYOUTS:
            out = subprocess.run(
                [sys.executable, "-m", "stylefleet.bench.arena", "--memory-of", model, layout, "--seconds", str(args.seconds)],
                capture_output=True, text=True, check=True,
            )
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{model:<20} {layout:<20} {rates[layout]:6.2f} img/s ({rates[layout] / best:.2f}x)  "
                f"RSS warmed {mem['warmed_mib']} MiB, under load {mem['load_min_mib']}-{mem['load_max_mib']} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
