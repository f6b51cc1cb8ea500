"""One served level and what it reads off the replicas: throughput, latency, batches, CPU, RSS,
the HTTP path's share and, on request, a py-spy profile. The served modes build on it."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from stylefleet.bench.common import SMALL_SIDE, small_samples
from stylefleet.bench.load import Case, Load
from stylefleet.deployments.batching import ModelRequest, OutputSpec


def case_load(url: str, case: Case, samples: dict[str, bytes]) -> Load:
    files = {f: (f"{f}.jpg", samples[f], "image/jpeg") for f in case.files}
    return Load(url, f"/v1/styles/{case.style}", files, dict(case.fields))


async def served_level(url: str, case: Case, samples: dict[str, bytes], concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
    return await case_load(url, case, samples).run(concurrency, total, cap_s)


def replica_infos(deployment: str, app: str = "stylefleet", tries: int = 40) -> list[dict[str, Any]]:
    """``info()`` of every running replica of a deployment: asked until each has answered once
    (the handle picks replicas itself), at most ``tries`` times."""
    from ray import serve
    from ray.serve.schema import ReplicaState

    status = serve.status().applications[app].deployments[deployment]
    running = int(status.replica_states.get(ReplicaState.RUNNING, 1)) if getattr(status, "replica_states", None) else 1
    handle = serve.get_deployment_handle(deployment, app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        info = handle.info.remote().result()
        seen[info["replica"]] = info
        if len(seen) >= running:
            break
    return list(seen.values())


class Usage:
    """CPU seconds of the machine and of the given processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._machine0 = psutil.cpu_times()
        self._procs0 = self._proc_seconds()

    def stop(self) -> dict[str, float]:
        wall = self.wall_s = time.perf_counter() - self._t0
        m0, m1 = self._machine0, psutil.cpu_times()
        total = sum(m1) - sum(m0)
        idle = (m1.idle + getattr(m1, "iowait", 0.0)) - (m0.idle + getattr(m0, "iowait", 0.0))
        cores = psutil.cpu_count() or 1
        procs = self._proc_seconds() - self._procs0
        return {
            "machine_cpu_utilisation": round(1 - idle / total, 3) if total > 0 else 0.0,
            "model_replicas_cpu_share": round(procs / (wall * cores), 3),
        }

    def _proc_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


# Where a replica's busy thread is, by the first matching frame from the innermost out: a frame
# is matched by its function's name and its file's path inside the package, as py-spy prints them
# ("Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:321)").
PROFILE_STAGES = (
    ("onnxruntime", "run", "onnxruntime/capi/onnxruntime_inference_collection.py"),
    ("decode", "decode", "stylefleet/imageio.py"),
    ("encode", "encode", "stylefleet/imageio.py"),
    ("resize", "_resize", "stylefleet/imageio.py"),
    ("prepare", "prepare", ""),
    ("finish", "finish", ""),
)
# A frame of the model's batch (the rest of a busy replica is 'serve').
BATCH_FRAMES = (("_timed", "stylefleet/deployments/serve/serving.py"), ("run_composed", "stylefleet/deployments/composed.py"))


def _frame(frame: str) -> tuple[str, str]:
    """``'Owner.name (pkg/file.py:12)'`` -> ``('name', 'pkg/file.py')``."""
    name, _, where = frame.partition(" (")
    return name.rpartition(".")[2], where.rstrip(")").rpartition(":")[0] or where.rstrip(")")


def _is(frame: tuple[str, str], name: str, path: str) -> bool:
    return frame[0] == name and (not path or frame[1] == path or frame[1].endswith("/" + path))


class Profiler:
    """``py-spy record`` on one process for a while, summarised as shares of its busy samples."""

    def __init__(self, pid: int, seconds: float) -> None:
        import shutil
        import subprocess
        import tempfile

        self.pid = pid
        self._out = Path(tempfile.mkdtemp(prefix="stylefleet-pyspy-")) / f"{pid}.txt"
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            self._proc = None
            print("  (py-spy not installed: `pip install -e '.[bench]'`; no profile)", flush=True)
            return
        self._proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
             "--format", "raw", "--nonblocking", "--output", str(self._out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def result(self) -> dict[str, Any]:
        if self._proc is None:
            return {"pid": self.pid, "shares": {}}
        self._proc.wait(timeout=600)
        counts: dict[str, int] = {}
        for line in self._out.read_text().splitlines() if self._out.exists() else []:
            stack, _, n = line.rpartition(" ")
            stage = summarise_stack(stack)
            if stage is not None:
                counts[stage] = counts.get(stage, 0) + int(n)
        total = sum(counts.values())
        shares = {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}
        return {"pid": self.pid, "busy_samples": total, "shares": shares, "raw": str(self._out)}


def summarise_stack(stack: str) -> str | None:
    """The stage of one collapsed py-spy stack (outermost;...;innermost). py-spy leaves idle
    threads out; a busy thread outside the batch (the event loop, Ray's own threads) is 'serve'."""
    frames = [_frame(f) for f in stack.split(";")]
    if not any(_is(f, name, path) for f in frames for name, path in BATCH_FRAMES):
        return "serve"
    for frame in reversed(frames):
        for stage, name, path in PROFILE_STAGES:
            if _is(frame, name, path):
                return stage
    return "other"


def mean_batch(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> float:
    """Mean batch size over every replica between two ``replica_infos`` snapshots."""
    old = {i["replica"]: i["batch_sizes"] for i in before}
    diff: dict[int, int] = {}
    for info in after:
        for k, v in info["batch_sizes"].items():
            diff[int(k)] = diff.get(int(k), 0) + int(v) - int(old.get(info["replica"], {}).get(k, 0))
    batches = sum(diff.values())
    return round(sum(k * v for k, v in diff.items()) / batches, 2) if batches else 0.0


def rss_of(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"replica": i["replica"], "rss_start_mib": i["rss_start_bytes"] >> 20, "rss_mib": i["rss_bytes"] >> 20} for i in infos
    ]


def measured_level(
    url: str, case: Case, samples: dict[str, bytes], concurrency: int, total: int, cap_s: float, profile_s: float = 0.0
) -> dict[str, Any]:
    """One served level: throughput, latency, batches, CPU and RSS; with ``profile_s``, then a
    separate py-spy pass. The profiler is never running while the figures are taken: sampling a
    replica costs CPU that, on a small machine, the service would otherwise have used."""
    before = replica_infos(case.deployment)
    usage = Usage([i["pid"] for i in before])
    usage.start()
    row = asyncio.run(served_level(url, case, samples, concurrency, total, cap_s))
    row.update(usage.stop())
    after = replica_infos(case.deployment)
    row["mean_batch_size"] = mean_batch(before, after)
    seconds = sum(i["compute_seconds"] for i in after) - sum(i["compute_seconds"] for i in before)
    done = row["requests"] - row["errors"]
    if done and concurrency == 1:
        # One request at a time: what is not the replica's own work (decode, model, encode) is
        # the path around it: client, proxy, router, the hops between them. p50 less a mean: it
        # moves by several ms between runs; http_path_ms below is the steadier split.
        row["replica_ms_per_request"] = round(seconds / done * 1000, 1)
        row["overhead_ms"] = round(row["p50_ms"] - row["replica_ms_per_request"], 1)
        row.update(http_path(url, case, samples))
        row.update({f"small_{k}": v for k, v in http_path(url, case, small_samples(samples), pairs=SMALL_PAIRS).items()})
    row["replicas"] = len(after)
    row["rss"] = rss_of(after)
    if profile_s > 0:
        profilers = [Profiler(i["pid"], profile_s) for i in after]
        asyncio.run(served_level(url, case, samples, concurrency, 10_000, profile_s))
        row["profile"] = [p.result() for p in profilers]
        for p in row["profile"]:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in p.get("shares", {}).items())
            print(f"  py-spy {case.deployment} pid {p.get('pid')}: " + shares, flush=True)
    return row


SMALL_PAIRS = 40


def http_path(url: str, case: Case, samples: dict[str, bytes], pairs: int = 20) -> dict[str, Any]:
    """What the HTTP path adds to one request (concurrency 1): the same request over HTTP
    (client, proxy, router) and straight to the model's deployment handle, alternating, one at a
    time; the difference of the two medians. The handle call still holds the replica's own work
    and Serve's hop to it, so this is what the proxy and the router add, nothing else."""
    from ray import serve

    handle = serve.get_deployment_handle(case.deployment, "stylefleet")
    files = {f: (f"{f}.jpg", samples[f], "image/jpeg") for f in case.files}
    over_http: list[float] = []
    direct: list[float] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(pairs):
            started = time.perf_counter()
            answer = client.post(f"/v1/styles/{case.style}", files=files, data=dict(case.fields))
            over_http.append(time.perf_counter() - started)
            if answer.status_code != 200:
                return {"http_path_error": answer.text[:200]}
            request = ModelRequest({}, dict(case.params), OutputSpec("png"), files={f: samples[f] for f in case.files})
            started = time.perf_counter()
            handle.remote(request).result()
            direct.append(time.perf_counter() - started)
    http_p50, handle_p50 = statistics.median(over_http) * 1000, statistics.median(direct) * 1000
    return {
        "http_p50_ms": round(http_p50, 1),
        "handle_p50_ms": round(handle_p50, 1),
        "http_path_ms": round(http_p50 - handle_p50, 1),
    }


def level_requests(requested: int, concurrency: int) -> int:
    """Requests for one level: at least six rounds of ``concurrency``, so that the steady window
    (all but the first and last round, ``stylefleet.bench.load.steady_rate``) holds four."""
    return max(requested, 6 * concurrency) if concurrency > 1 else requested


def saturated_ips(row: dict[str, Any]) -> float:
    """The level's rate with every client busy (``steady_ips``), or over the whole run where the
    run was too short to have such a window."""
    steady = row.get("steady_ips")
    return float(steady) if steady else float(row["ips"])


def print_level(deployment: str, row: dict[str, Any], label: str = "") -> None:
    rss = ", ".join(f"{r['rss_mib']} MiB" for r in row.get("rss", []))
    print(
        f"  served {deployment:<18}{label} conc {row['concurrency']:>2}: {row['ips']:6.2f} img/s"
        f"{' (steady ' + format(row['steady_ips'], '.2f') + ')' if row.get('steady_ips') else ''}  p50 {row['p50_ms']:7.1f} ms  "
        f"p95 {row['p95_ms']:7.1f} ms  mean batch {row['mean_batch_size']:4.2f}  CPU {row['machine_cpu_utilisation']:.0%} "
        f"(model {row['model_replicas_cpu_share']:.0%})  RSS {rss}"
        f"{'  overhead ' + str(row['overhead_ms']) + ' ms' if 'overhead_ms' in row else ''}"
        f"{http_path_text(row)}"
        f"{'  errors ' + str(row['errors']) if row['errors'] else ''}",
        flush=True,
    )


def http_path_text(row: dict[str, Any]) -> str:
    text = ""
    if "http_path_ms" in row:
        text += f"  HTTP path {row['http_path_ms']} ms (p50 over HTTP {row['http_p50_ms']}, to the handle {row['handle_p50_ms']})"
    if "small_http_path_ms" in row:
        text += (
            f"; at {SMALL_SIDE} px {row['small_http_path_ms']} ms "
            f"({row['small_http_p50_ms']} over HTTP, {row['small_handle_p50_ms']} to the handle)"
        )
    return text


def set_batching(cluster: Any, config: dict[str, Any], deployment: str, **changes: Any) -> None:
    """Change a deployment's user_config live (Serve calls reconfigure; no restart) and wait."""
    for entry in config["applications"][0].get("deployments", []):
        if entry["name"] == deployment:
            entry["user_config"] = {**entry.get("user_config", {}), **changes}
    cluster.deploy(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(all(i.get(k) == v for k, v in changes.items()) for i in replica_infos(deployment)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} did not take {changes}")
