"""Each Ray process's CPU (% of one core) over 30 s with the service idle: its background cost.

Usage: .venv/bin/python -m stylefleet.bench.idle (environment variables such as
RAY_SERVE_CONTROL_LOOP_INTERVAL_S reach the Ray it starts). docs/performance.md "Where the CPU goes".
"""

from __future__ import annotations

import copy
import os
import time

import psutil

from stylefleet.spec import load_serve_file
from stylefleet.tools.local import LocalCluster, free_port

SECONDS = 30


def snapshot() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if "ray" in cmd.lower() and proc.pid != os.getpid():
                times = proc.cpu_times()
                out[proc.pid] = (cmd[:70], times.user + times.system)
        except psutil.Error:
            pass
    return out


def main() -> None:
    config = copy.deepcopy(load_serve_file("serve_config.yaml").document)
    config["http_options"]["port"] = free_port()
    cluster = LocalCluster(log_to_driver=False)
    cluster.start()
    try:
        cluster.deploy(config)
        time.sleep(15)  # past start-up
        before = snapshot()
        time.sleep(SECONDS)
        after = snapshot()
    finally:
        cluster.stop()
    rows = sorted(((after[p][1] - before[p][1]) / SECONDS * 100, after[p][0]) for p in after if p in before)
    for pct, cmd in reversed(rows):
        if pct > 0.2:
            print(f"{pct:6.1f}%  {cmd}")
    print(f"{sum(pct for pct, _ in rows):6.1f}% in all (of one core)")


if __name__ == "__main__":
    main()
