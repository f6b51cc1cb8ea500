"""The supervisor of ``stylefleet run`` with a fake process table (no Ray): it finds a dead raylet
or GCS, stops every process of the session by pid, removes the token and the down file, and the
router answers 503 while the service goes down. ``OwnProcesses`` is checked on real (non-Ray)
child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stylefleet import lifecycle
from stylefleet.router.health import DeploymentState
from stylefleet.tools.local import LocalCluster, claim_state_dir, write_private_token
from stylefleet.tools.supervise import Death, OwnProcesses, Supervisor, stop_processes
from tests.unit.apps import api_client
from tests.unit.fakes import FakeBackend

RAYLET, GCS, WORKER, AGENT = 101, 102, 201, 202


class FakeProcesses:
    """A process table: ``stubborn`` pids ignore SIGTERM, ``immortal`` ones ignore every signal."""

    def __init__(self, running: set[int], *, stubborn: set[int] = frozenset(), immortal: set[int] = frozenset()) -> None:
        self.running = set(running)
        self.listed = set(running)  # the descendants (an orphan drops out)
        self.orphans: set[int] = set()  # found only by looking everywhere
        self.stubborn = set(stubborn)
        self.immortal = set(immortal)
        self.signals: list[tuple[int, int]] = []
        self.on_signal = lambda: None

    def alive(self, pid: int) -> bool:
        return pid in self.running

    def session(self, everywhere: bool = False) -> set[int]:
        return (self.listed | (self.orphans if everywhere else set())) & self.running

    def signal(self, pid: int, sig: int) -> None:
        self.on_signal()
        self.signals.append((pid, sig))
        if pid in self.immortal or (sig == signal.SIGTERM and pid in self.stubborn):
            return
        self.running.discard(pid)

    def die(self, pid: int) -> None:
        self.running.discard(pid)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _supervisor(processes: FakeProcesses, on_death=lambda death: None, **kwargs) -> Supervisor:
    return Supervisor({"raylet": RAYLET, "GCS": GCS}, processes, on_death, **kwargs)


def test_nothing_is_reported_while_the_raylet_and_the_gcs_run() -> None:
    processes = FakeProcesses({RAYLET, GCS, WORKER})
    assert _supervisor(processes).poll() is None


@pytest.mark.parametrize(("name", "pid"), [("raylet", RAYLET), ("GCS", GCS)])
def test_a_dead_watched_process_is_reported_by_name_and_pid(name: str, pid: int) -> None:
    processes = FakeProcesses({RAYLET, GCS, WORKER})
    supervisor = _supervisor(processes)
    processes.die(pid)
    assert supervisor.poll() == Death(name, pid)
    assert Death(name, pid).message() == f"Ray's {name} (pid {pid}) died; stopping the service"


def test_a_process_the_dead_raylet_orphaned_stays_recorded() -> None:
    processes = FakeProcesses({RAYLET, GCS, WORKER})
    supervisor = _supervisor(processes, refresh_every=1)
    supervisor.poll()
    processes.die(RAYLET)
    processes.listed.discard(WORKER)  # reparented: no longer among the descendants
    assert supervisor.poll() == Death("raylet", RAYLET)
    assert WORKER in supervisor.recorded


def test_the_thread_calls_on_death_once_with_the_first_death() -> None:
    processes = FakeProcesses({RAYLET, GCS})
    deaths: list[Death] = []
    called = threading.Event()

    def on_death(death: Death) -> None:
        deaths.append(death)
        called.set()

    supervisor = _supervisor(processes, on_death, interval_s=0.01)
    supervisor.start()
    processes.die(GCS)
    assert called.wait(10)
    supervisor.stop()
    assert deaths == [Death("GCS", GCS)]


def test_a_stopped_supervisor_reports_nothing() -> None:
    processes = FakeProcesses({RAYLET, GCS})
    deaths: list[Death] = []
    supervisor = _supervisor(processes, deaths.append, interval_s=0.01)
    supervisor.start()
    supervisor.stop()  # joins the thread: no poll runs after this
    processes.die(RAYLET)
    assert deaths == []


def test_stop_processes_terms_first_and_kills_only_the_stubborn() -> None:
    processes = FakeProcesses({GCS, WORKER, AGENT}, stubborn={AGENT})
    clock = FakeClock()
    left = stop_processes({GCS, WORKER, AGENT, RAYLET}, processes, term_grace_s=5, kill_grace_s=5, clock=clock, sleep=clock.sleep)
    assert left == set()
    assert processes.running == set()
    assert (RAYLET, signal.SIGTERM) not in processes.signals, "a dead pid is not signalled (it may be reused)"
    assert {(p, s) for p, s in processes.signals if s == signal.SIGKILL} == {(AGENT, signal.SIGKILL)}
    assert 5 <= clock.now < 5.5, "SIGKILL came after the grace period"


def test_stop_processes_returns_what_would_not_die() -> None:
    processes = FakeProcesses({WORKER, AGENT}, immortal={AGENT})
    clock = FakeClock()
    assert stop_processes({WORKER, AGENT}, processes, clock=clock, sleep=clock.sleep) == {AGENT}


@pytest.fixture()
def held_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A LocalCluster as after ``start``: its lock held, its token written (no Ray)."""
    cluster = LocalCluster(state_dir=tmp_path / "state")
    cluster._lock_fd = claim_state_dir(cluster.state_dir, {})
    cluster.token_path = write_private_token(cluster.state_dir)
    yield cluster
    cluster._unlock()


def test_stop_dead_tells_the_router_first_then_stops_the_session_and_cleans_up(held_cluster: LocalCluster) -> None:
    processes = FakeProcesses({GCS, WORKER, AGENT})
    down_at_first_signal: list[str] = []
    processes.on_signal = lambda: down_at_first_signal.append(held_cluster.down_file.read_text()) if not down_at_first_signal else None
    held_cluster.supervisor = _supervisor(processes)
    held_cluster.supervisor.recorded = {RAYLET, GCS, WORKER}
    processes.listed = set()
    processes.orphans = {AGENT}  # found at the end only (by the marker, in the real table)

    assert held_cluster.stop_dead("Ray's raylet (pid 101) died", drain_s=0) == set()

    assert down_at_first_signal == ["Ray's raylet (pid 101) died\n"]
    assert processes.running == set()
    assert held_cluster.token_path is not None and not held_cluster.token_path.exists()
    assert not held_cluster.down_file.exists()
    os.close(claim_state_dir(held_cluster.state_dir, {}))  # the lock was released


@pytest.fixture()
def going_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    down = tmp_path / "down"
    down.write_text("Ray's raylet (pid 101) died; stopping the service\n")
    monkeypatch.setenv(lifecycle.DOWN_FILE_ENV, str(down))
    return down


class UnreachableBackend(FakeBackend):
    """Serve that never answers, as with a dead raylet: being asked fails the test."""

    async def health(self) -> dict[str, DeploymentState]:
        raise AssertionError("asked Serve while the service is going down")


@pytest.fixture()
def api() -> TestClient:
    return api_client(UnreachableBackend(statuses={"stylize": DeploymentState("HEALTHY", 1)}))


@pytest.mark.parametrize("path", ["/healthz/ready", "/healthz"])
def test_readiness_fails_at_once_while_going_down(api: TestClient, going_down: Path, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"] == {"code": "service_stopping", "message": "Ray's raylet (pid 101) died; stopping the service"}


def test_requests_are_answered_503_while_going_down(api: TestClient, going_down: Path) -> None:
    r = api.get("/v1/styles")
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_stopping"
    assert r.headers["retry-after"] == "10"


def test_liveness_holds_while_going_down(api: TestClient, going_down: Path) -> None:
    assert api.get("/healthz/live").status_code == 200


def test_requests_pass_while_the_down_file_is_absent(api: TestClient, going_down: Path) -> None:
    going_down.unlink()
    assert api.get("/v1/styles").status_code == 200


@pytest.fixture()
def marked_orphan(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A process that inherited the marker and lost its parent (as a dead raylet's workers do)."""
    marker = str(tmp_path / "down")
    script = (
        "import subprocess, sys; q = subprocess.DEVNULL; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], stdout=q, stderr=q); print(p.pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, lifecycle.DOWN_FILE_ENV: marker},
        capture_output=True, text=True, timeout=30, check=True,
    )
    pid = int(out.stdout)
    try:
        yield pid, marker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_own_processes_find_an_orphan_by_its_marker_and_stop_it(marked_orphan: tuple[int, str]) -> None:
    pid, marker = marked_orphan
    processes = OwnProcesses(marker=(lifecycle.DOWN_FILE_ENV, marker))
    assert pid not in processes.session(), "not a descendant"
    assert pid in processes.session(everywhere=True)
    assert processes.alive(pid)
    assert stop_processes({pid}, processes, term_grace_s=10) == set()
    assert not processes.alive(pid)


def test_own_processes_ignore_processes_without_the_marker(marked_orphan: tuple[int, str], tmp_path: Path) -> None:
    pid, _ = marked_orphan
    assert pid not in OwnProcesses(marker=(lifecycle.DOWN_FILE_ENV, str(tmp_path / "another"))).session(everywhere=True)


def test_own_processes_never_signal_a_pid_they_did_not_record() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        OwnProcesses(root=-1).signal(child.pid, signal.SIGKILL)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=30)
