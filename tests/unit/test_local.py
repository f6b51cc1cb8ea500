"""``LocalCluster.start`` beside a running service: it refuses before touching anything. No Ray
starts here (the unit conftest makes ``ray.init`` raise), so reaching it fails the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stylefleet.tools import cli
from stylefleet.tools.local import LOOPBACK, AlreadyRunning, LocalCluster, apply_ray_environment, claim_state_dir, free_port

LIVE_TOKEN = "the-live-clusters-token"


@pytest.fixture()
def live_service(tmp_path: Path) -> Path:
    """A state folder held by another process, as a running ``stylefleet run`` holds it."""
    state = tmp_path / ".stylefleet"
    state.mkdir()
    (state / "ray-auth-token").write_text(LIVE_TOKEN)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from stylefleet.tools.local import claim_state_dir; "
         "claim_state_dir(Path(sys.argv[1]), {'HTTP': '127.0.0.1:8000'}); print('held', flush=True); sys.stdin.read()",
         str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield state
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_second_start_refuses_and_leaves_the_live_token_alone(live_service: Path) -> None:
    cluster = LocalCluster(state_dir=live_service, include_dashboard=False)
    with pytest.raises(AlreadyRunning, match=r"already running from .*127\.0\.0\.1:8000"):
        cluster.start()
    assert (live_service / "ray-auth-token").read_text() == LIVE_TOKEN


def test_stylefleet_run_says_so_and_exits_1(live_service: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "serve_config.yaml", "--state-dir", str(live_service), "--no-dashboard"])
    assert code == 1 and "already running" in capsys.readouterr().err
    assert (live_service / "ray-auth-token").read_text() == LIVE_TOKEN


def test_a_taken_port_refuses_before_any_token_is_written(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = LocalCluster(state_dir=tmp_path / "state", include_dashboard=True, dashboard_port=port)
        with pytest.raises(AlreadyRunning, match=f"dashboard 127.0.0.1:{port} already in use"):
            cluster.start()
    assert not (tmp_path / "state" / "ray-auth-token").exists()
    os.close(claim_state_dir(tmp_path / "state", {}))  # and the refused start let go of the folder


def test_the_folder_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    cluster = LocalCluster(state_dir=tmp_path, http_port=free_port())
    cluster._claim()
    with pytest.raises(AlreadyRunning):
        claim_state_dir(tmp_path, {})
    cluster._unlock()
    os.close(claim_state_dir(tmp_path, {}))


def test_the_ray_environment_is_set_unless_the_operator_set_it() -> None:
    environ = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "2"}
    apply_ray_environment(environ)
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "2"
    assert environ["RAY_USAGE_STATS_ENABLED"] == "0"
    fresh: dict[str, str] = {}
    apply_ray_environment(fresh)
    assert fresh["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    assert fresh["RAY_max_direct_call_object_size"] == str(2 * 1024 * 1024)  # a 512-1024 px PNG skips the object store
    assert fresh["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
