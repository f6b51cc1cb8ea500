"""One model served at several ``max_batch_size`` values, alternating on the same live replica
(backlog queue, wait 0, changed through user_config): steady img/s and mean batch per turn.

Usage: .venv/bin/python scripts/batch_served.py [DEPLOYMENT] [SIZES] [ROUNDS] [CONCURRENCY] [SECONDS]
(default restyle 1,4 3 16 40). Each turn is one bench level (``stylefleet bench``'s load,
``--requests 48``); the sizes go A B A B ... so the host's drift lands on every size alike.
docs/performance.md "Sessions 22-24".
"""

from __future__ import annotations

import copy
import statistics
import sys

from stylefleet.spec import load_serve_file
from stylefleet.tools.bench import _cases, _print_level, _samples, _set_batching, level_requests, measured_level, saturated_ips
from stylefleet.tools.local import LocalCluster, choose_ingress, free_port


def main() -> None:
    deployment = sys.argv[1] if len(sys.argv) > 1 else "restyle"
    sizes = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "1,4").split(",")]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 40.0
    serve_file = load_serve_file("serve_config.yaml")
    cases = {c.deployment: c for c in _cases(serve_file.app)}
    if deployment not in cases:
        raise SystemExit(f"batch_served.py: no benchmark case for {deployment!r}; one of {sorted(cases)}")
    case = cases[deployment]
    config = copy.deepcopy(serve_file.document)
    port = free_port()
    config["http_options"]["port"] = port
    samples = _samples()
    cluster = LocalCluster(log_to_driver=False, http_port=port, ingress=choose_ingress("auto", serve_file.direct_ingress_blocker()))
    cluster.start()
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    batches: dict[int, list[float]] = {b: [] for b in sizes}
    try:
        cluster.deploy(config)
        url = f"http://127.0.0.1:{port}"
        measured_level(url, case, samples, concurrency, level_requests(48, concurrency), seconds / 2)  # warm-up, not counted
        for _ in range(rounds):
            for b in sizes:
                _set_batching(cluster, config, deployment, max_batch_size=b, queue="backlog", batch_wait_timeout_s=0.0)
                row = measured_level(url, case, samples, concurrency, level_requests(48, concurrency), seconds)
                _print_level(deployment, row, f" [max_batch_size {b}]")
                rates[b].append(saturated_ips(row))
                batches[b].append(row["mean_batch_size"])
    finally:
        cluster.stop()
    for b in sizes:
        print(f"max_batch_size {b}: steady img/s {rates[b]} (median {statistics.median(rates[b]):.2f}), mean batch {batches[b]}")


if __name__ == "__main__":
    main()
