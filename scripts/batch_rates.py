"""One model's images/s at several batch sizes, alternating, in one process: two one-thread
calls at once (what a replica runs on 2 cores), inputs prepared once, 3 s per turn.

Usage: .venv/bin/python scripts/batch_rates.py [DEPLOYMENT] [SIZES] [ROUNDS] (default restyle 4,8 6).
docs/performance.md "Session 20 figures".
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from stylefleet.deployments.batching import ModelRequest, decoded
from stylefleet.deployments.loader import load_model
from stylefleet.spec import load_serve_file
from stylefleet.tools.bench import _cases, _samples

CALLS = 2
TURN_S = 3.0


def main() -> None:
    deployment = sys.argv[1] if len(sys.argv) > 1 else "restyle"
    sizes = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "4,8").split(",")]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    spec = load_serve_file("serve_config.yaml").app
    [case] = [c for c in _cases(spec) if c.deployment == deployment]
    model = load_model(spec.model_spec(deployment).model_copy(update={"threads": 1})).model
    samples = _samples()
    files = {f: samples[f] for f in case.files}
    # Prepared before any call, so restyle's predict runs in every call (no kept style vector).
    prepared = {b: [model.prepare(decoded(model, ModelRequest({}, dict(case.params), files=files))) for _ in range(b)] for b in sizes}
    pool = ThreadPoolExecutor(CALLS)

    def turn(b: int) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < TURN_S:
            list(pool.map(lambda _: model.infer(prepared[b]), range(CALLS)))
            done += CALLS * b
        return done / (time.perf_counter() - started)

    for b in sizes:
        turn(b)  # warm-up
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(rounds):
        for b in sizes:
            rates[b].append(turn(b))
    for b in sizes:
        print(f"{deployment} batch {b}: {statistics.median(rates[b]):.2f} img/s median ({', '.join(f'{r:.2f}' for r in rates[b])})")


if __name__ == "__main__":
    main()
