"""CPU milliseconds per request, by process, during a bounded load on a fresh local service.

Usage: .venv/bin/python scripts/cpu_split.py [STYLE] [CONCURRENCY] [REQUESTS] [PHOTO.jpg]
(default remove-background 16 64, the astronaut as JPEG; restyle sends the cat as its style).
INGRESS=proxy in the environment puts Serve's proxy in front of the router (default: direct). With SPY=SECONDS in the environment,
py-spy also records the router, the proxy and the controller for that long (raw stacks in
/tmp/spy-*.txt; summarise them with scripts/spy_top.py). docs/performance.md "Where the CPU goes".
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from stylefleet.spec import load_serve_file
from stylefleet.tools.bench_load import Load
from stylefleet.tools.local import LocalCluster, free_port

SPIED = ("router", "ProxyActor", "ServeController")


def snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (command, CPU seconds so far) for this process and every Ray process."""
    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])[:80]
            if proc.pid == me or "ray" in cmd.lower():
                times = proc.cpu_times()
                out[proc.pid] = ("CLIENT" if proc.pid == me else cmd, times.user + times.system)
        except psutil.Error:
            pass
    return out


def spies(processes: dict[int, tuple[str, float]], seconds: str) -> list[subprocess.Popen[bytes]]:
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    started = []
    for pid, (cmd, _) in processes.items():
        for tag in SPIED:
            if tag in cmd:
                args = [py_spy, "record", "-p", str(pid), "-d", seconds, "-r", "100", "-f", "raw", "--nonblocking"]
                args += ["-o", f"/tmp/spy-{tag}.txt"]
                started.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def main() -> None:
    style = sys.argv[1] if len(sys.argv) > 1 else "remove-background"
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.samples
    from tests import samples

    photo = Path(sys.argv[4]).read_bytes() if len(sys.argv) > 4 else samples.encoded(samples.astronaut(), "JPEG")
    config = copy.deepcopy(load_serve_file("serve_config.yaml").document)
    port = free_port()
    config["http_options"]["port"] = port
    ingress = os.environ.get("INGRESS", "direct")
    cluster = LocalCluster(log_to_driver=False, http_port=port, ingress=ingress)
    cluster.start()
    try:
        cluster.deploy(config)
        files = {"image": ("a.jpg", photo, "image/jpeg")}
        if style == "restyle":  # the bench's style picture
            from skimage import data

            files["style_image"] = ("s.jpg", samples.encoded(data.chelsea(), "JPEG"), "image/jpeg")
        load = Load(f"http://127.0.0.1:{port}", f"/v1/styles/{style}", files, {})
        asyncio.run(load.run(concurrency, 2 * concurrency, 60))  # warm up
        before = snapshot()
        started = time.perf_counter()
        spying = spies(before, os.environ["SPY"]) if os.environ.get("SPY") else []
        result = asyncio.run(load.run(concurrency, total, 120))
        for spy in spying:
            spy.wait()
        wall = time.perf_counter() - started
        after = snapshot()
    finally:
        cluster.stop()
    done = max(1, result["requests"])
    print(result)
    rows = sorted(((after[p][1] - before[p][1]) * 1000 / done, after[p][0]) for p in after if p in before)
    for ms, cmd in reversed(rows):
        if ms > 0.5:
            print(f"{ms:8.1f} ms/req  {cmd}")
    cores = psutil.cpu_count() or 1
    print(f"{sum(ms for ms, _ in rows):8.1f} ms/req of CPU in all; wall {wall * 1000 / done:.1f} ms/req x {cores} cores")


if __name__ == "__main__":
    main()
