"""Chaos cases: break the running service on purpose and print what held.

``python -m stylefleet.tools.chaos dead-ray``: for the raylet and then the GCS, starts
``stylefleet run`` on the shipped config (on free ports, its own state folder and jobs folder),
waits until it serves, polls ``/healthz/ready`` every 0.2 s, SIGKILLs that Ray process and
reports: the first 503 ``service_stopping`` and how long after the kill it came, the exit code and
message of ``stylefleet run``, how long it took to exit, the processes of its Ray session still
running, the token file, and whether the port still accepts connections (docs/operations.md
"When a Ray process dies").
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

DEAD_RAY_PROCESSES = {"raylet": "raylet", "gcs_server": "GCS"}  # process name -> its name in messages
DEAD_RAY_EXIT_CODE = 3  # stylefleet run's documented code for a dead Ray process


def dead_ray(config: str = "serve_config.yaml", processes: tuple[str, ...] = tuple(DEAD_RAY_PROCESSES), *,
             start_timeout_s: float = 600, exit_within_s: float = 30) -> dict[str, Any]:
    """Kill each of ``processes`` under a fresh ``stylefleet run`` of ``config``; what held, per process."""
    from stylefleet.tools.local import free_port

    results: dict[str, Any] = {}
    for process in processes:
        work = Path(tempfile.mkdtemp(prefix="stylefleet-chaos-"))
        port = free_port()
        document = yaml.safe_load(Path(config).read_text())
        document["http_options"]["port"] = port
        for app in document["applications"]:
            app["args"].setdefault("jobs", {})["storage"] = str(work / f"jobs-{app['name']}")
        config_file = work / "serve_config.yaml"
        config_file.write_text(yaml.safe_dump(document, sort_keys=False))
        state = work / "state"
        command = [
            sys.executable, "-m", "stylefleet.tools.cli", "run", str(config_file), "--state-dir", str(state),
            "--no-dashboard", "--metrics-port", str(free_port()), "--timeout", str(start_timeout_s),
        ]
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(command, stdout=out, stderr=err)
        session: list[psutil.Process] = []
        result: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + start_timeout_s
            while "stylefleet is serving on" not in out_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"stylefleet run did not start: {err_path.read_text()[-2000:]}")
                time.sleep(0.5)
            session = psutil.Process(proc.pid).children(recursive=True)
            [victim] = [p for p in session if p.name() == process]
            probes: list[tuple[float, str]] = []
            stop_probing = threading.Event()

            prober = threading.Thread(target=_probe_ready, args=(port, stop_probing, probes), daemon=True)
            prober.start()
            killed_at = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            try:
                code: int | None = proc.wait(timeout=exit_within_s)
            except subprocess.TimeoutExpired:
                code = None
            exited_s = time.monotonic() - killed_at if code is not None else None
            stop_probing.set()
            prober.join()
            stopping = [t - killed_at for t, answer in probes if t >= killed_at and answer == "503 service_stopping"]
            message = f"stylefleet: Ray's {DEAD_RAY_PROCESSES[process]} (pid {victim.pid}) died; stopping the service"
            left = [f"{p.pid} {p.name()}" for p in session if _running(p)]
            result = {
                "killed": f"{process} (pid {victim.pid})",
                "processes_in_session": len(session),
                "exit_code": code,
                "exit_code_held": code == DEAD_RAY_EXIT_CODE,
                "exited_within_s": None if exited_s is None else round(exited_s, 1),
                "exited_in_time": exited_s is not None and exited_s <= exit_within_s,
                "own_message": message in err_path.read_text(),
                "first_service_stopping_s": round(stopping[0], 1) if stopping else None,
                "readiness_answers_after_kill": sorted({answer for t, answer in probes if t >= killed_at}),
                "processes_left": left,
                "token_file_removed": not (state / "ray-auth-token").exists(),
                "port_closed": not _accepts(port),
            }
            result["held"] = (
                result["exit_code_held"] and result["exited_in_time"] and result["own_message"]
                and not left and result["token_file_removed"] and result["port_closed"]
            )
        finally:
            for p in [*session, *([psutil.Process(proc.pid)] if proc.poll() is None else [])]:
                if _running(p):
                    p.kill()  # psutil checks the pid still names the recorded process
            proc.wait(timeout=30)
            result["stderr_tail"] = [line for line in err_path.read_text().splitlines() if line.startswith(("stylefleet:", "20"))][-4:]
            shutil.rmtree(work, ignore_errors=True)
        results[process] = result
    return results


def _probe_ready(port: int, stop: threading.Event, probes: list[tuple[float, str]]) -> None:
    """``/healthz/ready`` every 0.2 s until ``stop``: (when, "status code" or the error's name)."""
    with httpx.Client(timeout=1.0) as client:
        while not stop.wait(0.2):
            try:
                r = client.get(f"http://127.0.0.1:{port}/healthz/ready")
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                answer = f"{r.status_code} {(body.get('error') or {}).get('code', '')}".strip()
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            probes.append((time.monotonic(), answer))


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
