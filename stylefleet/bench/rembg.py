"""``stylefleet bench rembg --rembg PATH``: remove-background against rembg's own server, same model and photo.

Starts ``rembg s --host 127.0.0.1 --no-ui`` on a free loopback port, with ``U2NET_HOME`` pointing
at a private folder holding the very ``u2netp.onnx`` the service loads (rembg then downloads
nothing), and loads both servers in turns (ours, rembg, ours, rembg ...) at each concurrency, so
the machine's drift hits both alike. It stops only the rembg process it started, by its pid.

rembg is not a dependency of stylefleet: install it in its own virtual environment
(``make bench-rembg`` does) and pass its ``rembg`` executable. The run is the served run
(``stylefleet.bench.served``) on remove-background, with this comparison as its last pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from stylefleet.bench.common import ExtraPass, rounds_arg, style_cases
from stylefleet.bench.load import Case, Load
from stylefleet.deployments.registry import resolve
from stylefleet.spec import AppSpec
from stylefleet.tools.local import LOOPBACK, free_port


def _start(rembg: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    shutil.copyfile(resolve("u2netp").path, home / "u2netp.onnx")
    port = free_port()
    env = {**os.environ, "U2NET_HOME": str(home)}
    proc = subprocess.Popen(
        [rembg, "s", "--host", LOOPBACK, "--port", str(port), "--no-ui", "--log_level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`{rembg} s` exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"`{rembg} s` did not answer within 180 s")


def _steady(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The steady-window figures of one round (``stylefleet.bench.load.steady_rate``), where both have one."""
    if not (a.get("steady_ips") and b.get("steady_ips")):
        return ""
    return f"  steady {a['steady_ips']:.2f} vs {b['steady_ips']:.2f}: {a['steady_ips'] / b['steady_ips']:.2f}"


def compare(rembg: str, url: str, case: Case, samples: dict[str, bytes], rounds: int, cap_s: float) -> dict[str, Any]:
    photo = samples["image"]
    ours = Load(url, f"/v1/styles/{case.style}", {"image": ("image.jpg", photo, "image/jpeg")}, dict(case.fields))
    with tempfile.TemporaryDirectory(prefix="stylefleet-rembg-") as home:
        proc, rembg_url = _start(rembg, Path(home))
        try:
            theirs = Load(rembg_url, "/api/remove", {"file": ("image.jpg", photo, "image/jpeg")}, {"model": "u2netp"})
            print(
                f"== remove-background vs `rembg s` ({rembg_url}, u2netp, astronaut 512 px JPEG), {rounds} alternating rounds", flush=True
            )
            levels = []
            for concurrency in (16, 1):
                total = 6 * concurrency if concurrency > 1 else 12  # six rounds: a steady window of four
                for load in (ours, theirs):
                    # Warm-up at this level's concurrency, untimed: rembg builds its session on the
                    # first request, and both servers' ONNX arenas grow on the first calls that run
                    # this many at once (rembg's first 16-wide round ran at 0.7x its later ones).
                    asyncio.run(load.run(concurrency, 2 * concurrency, cap_s))
                pairs = []
                for _ in range(rounds):
                    a = asyncio.run(ours.run(concurrency, total, cap_s))
                    b = asyncio.run(theirs.run(concurrency, total, cap_s))
                    pairs.append((a, b))
                    print(
                        f"  conc {concurrency:>2}: stylefleet {a['ips']:6.2f} req/s (p50 {a['p50_ms']:6.1f} ms)  "
                        f"rembg s {b['ips']:6.2f} req/s (p50 {b['p50_ms']:6.1f} ms)  ratio {a['ips'] / b['ips']:.2f}"
                        f"{_steady(a, b)}",
                        flush=True,
                    )
                ratio = statistics.median(a["ips"] / b["ips"] for a, b in pairs if b["ips"])
                steady = [a["steady_ips"] / b["steady_ips"] for a, b in pairs if a.get("steady_ips") and b.get("steady_ips")]
                levels.append(
                    {
                        "concurrency": concurrency,
                        "rounds": [{"stylefleet": a, "rembg": b} for a, b in pairs],
                        "median_ratio": round(ratio, 2),
                        "median_steady_ratio": round(statistics.median(steady), 2) if steady else None,
                    }
                )
                print(
                    f"  => conc {concurrency}: stylefleet / rembg s = {ratio:.2f} whole runs"
                    f"{f', {statistics.median(steady):.2f} steady' if steady else ''} (median of {len(pairs)} rounds)",
                    flush=True,
                )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"levels": levels}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rembg", required=True, help="path of a `rembg` executable (its own virtual environment)")
    parser.add_argument("--rembg-rounds", type=rounds_arg, default=3, help="alternating rounds (ours, rembg) per concurrency")
    parser.set_defaults(only="remove-background", compare=False, concurrency="1,16", out="bench-results/rembg.json")


def rembg_pass(args: argparse.Namespace) -> ExtraPass:
    """The served run's extra pass: ``(url, spec, samples) -> ("rembg", the comparison)``."""

    def run(url: str, spec: AppSpec, samples: dict[str, bytes]) -> tuple[str, Any]:
        case = next(c for c in style_cases(spec) if c.deployment == "remove-background")
        return "rembg", compare(args.rembg, url, case, samples, args.rembg_rounds, args.seconds)

    return run
