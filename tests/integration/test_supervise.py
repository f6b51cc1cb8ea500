"""``stylefleet run`` when a Ray process it needs dies: a real ``stylefleet run`` subprocess with a
small config (the stylize deployment and one style), its raylet or its GCS killed with SIGKILL.
It must exit 3 with its own message within 30 s, leave no process of its Ray session running and
remove its token file (docs/operations.md "When a Ray process dies").

No shared cluster: each case starts and ends its own service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from stylefleet.tools.local import free_port
from tests.samples import ROOT

STYLE = "pastel-wash"
START_TIMEOUT_S = 300
EXIT_WITHIN_S = 30
EXIT_RAY_DIED = 3  # documented in docs/operations.md


def small_config(port: int, jobs: Path) -> dict[str, Any]:
    """The shipped config cut to the router, the stylize deployment and one of its styles."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    args = app["args"]
    args["deployments"] = {"stylize": args["deployments"]["stylize"]}
    args["styles"] = {STYLE: args["styles"][STYLE]}
    args["jobs"]["storage"] = str(jobs)
    app["deployments"] = [
        {"name": "router", "user_config": {"splits": {}, "shadows": {}}},
        next(d for d in app["deployments"] if d["name"] == "stylize"),
    ]
    return config


class Service:
    """A ``stylefleet run`` subprocess, its output in files (a full pipe would stall it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.state = tmp_path / "state"
        config_file = tmp_path / "serve_config.yaml"
        config_file.write_text(yaml.safe_dump(small_config(self.port, tmp_path / "jobs")))
        self.stdout_path, self.stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        command = [
            sys.executable, "-m", "stylefleet.tools.cli", "run", str(config_file), "--state-dir", str(self.state),
            "--no-dashboard", "--metrics-port", str(free_port()), "--num-cpus", "2", "--timeout", str(START_TIMEOUT_S),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err)
        self.session: list[psutil.Process] = []

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "stylefleet is serving on" not in self.stdout_path.read_text():
            assert self.proc.poll() is None, f"stylefleet run ended: {self.stderr_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "not serving in time"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{self.port}/healthz/ready", timeout=30).status_code == 200

    def ray_process(self, name: str) -> psutil.Process:
        """Record every process of the session (the descendants of ``stylefleet run``), and return
        the one called ``name``."""
        self.session = psutil.Process(self.proc.pid).children(recursive=True)
        [found] = [p for p in self.session if p.name() == name]
        return found

    def running(self) -> list[str]:
        """The recorded processes still running (a zombie waits only for its parent to read it)."""
        left = []
        for proc in self.session:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {proc.name()}")
            except psutil.NoSuchProcess:
                continue
        return left

    def kill_all(self) -> None:
        for proc in [*self.session, psutil.Process(self.proc.pid)] if self.proc.poll() is None else self.session:
            try:
                proc.kill()  # psutil checks that the pid still names the recorded process
            except psutil.NoSuchProcess:
                continue
        self.proc.wait(timeout=30)


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    try:
        yield running
    finally:
        running.kill_all()  # a failed case leaves nothing behind either


@pytest.mark.parametrize(("process", "name"), [("raylet", "raylet"), ("gcs_server", "GCS")])
def test_a_dead_ray_process_stops_the_whole_service(service: Service, process: str, name: str) -> None:
    service.wait_serving()
    victim = service.ray_process(process)
    assert (service.state / "ray-auth-token").exists()

    victim.send_signal(signal.SIGKILL)

    try:
        returncode = service.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"stylefleet run still running {EXIT_WITHIN_S} s after its {process} was killed")
    assert returncode == EXIT_RAY_DIED
    assert f"stylefleet: Ray's {name} (pid {victim.pid}) died; stopping the service" in service.stderr_path.read_text()
    assert service.running() == []
    assert not (service.state / "ray-auth-token").exists()
    assert not (service.state / "down").exists()


def test_a_deliberate_stop_is_not_taken_for_a_death(service: Service) -> None:
    service.wait_serving()
    service.ray_process("raylet")  # records the session

    service.proc.send_signal(signal.SIGINT)

    assert service.proc.wait(timeout=120) == 0
    assert "died" not in service.stderr_path.read_text()
    assert service.running() == []
    assert not (service.state / "ray-auth-token").exists()
