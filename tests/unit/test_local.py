"""``LocalCluster.start`` beside a running service: it refuses before touching anything. No Ray
starts here (the unit conftest makes ``ray.init`` raise), so reaching it fails the test."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stylefleet.spec import check_document, load_serve_file
from stylefleet.tools import cli, local
from stylefleet.tools.local import (
    LOOPBACK,
    AlreadyRunning,
    LocalCluster,
    apply_ray_environment,
    choose_ingress,
    claim_state_dir,
    direct_ingress_environment,
    free_port,
)
from tests.samples import ROOT

GIB = 1024**3

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


# -- direct ingress: the router replica answers on the config's port ---------------------------


def test_direct_ingress_gives_the_ingress_replicas_the_port_and_holds_nothing_back() -> None:
    env = direct_ingress_environment(8000)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Serve allocates from range(min, max): one port, the config's own
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("8000", "8001")
    assert direct_ingress_environment(8000, 8)["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "8008"
    # no load balancer in front: a restarted router takes its port back at once, and stops at once
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ingress": "direct"}, "needs the HTTP port"), ({"ingress": "haproxy", "http_port": 8000}, "'proxy' or 'direct'")],
)
def test_a_cluster_refuses_an_ingress_it_cannot_run(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalCluster(**kwargs)  # type: ignore[arg-type]


def test_ray_starts_with_the_direct_ingress_environment_and_this_process_gets_its_own_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    for name in direct_ingress_environment(1):
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, str] = {}

    def init(**_kwargs: object) -> None:  # what the Ray processes would inherit
        seen.update(os.environ)
        raise RuntimeError("no Ray in unit tests")

    monkeypatch.setattr(ray, "init", init)
    port = free_port()
    cluster = LocalCluster(state_dir=tmp_path, http_port=port, ingress="direct")
    with pytest.raises(RuntimeError, match="no Ray"):
        cluster.start()
    assert seen["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert seen["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == str(port)
    assert cluster.proxy_port is not None and cluster.proxy_port != port
    assert not any(name in os.environ for name in direct_ingress_environment(port))


def test_with_direct_ingress_serve_s_proxy_gets_the_free_port_and_the_config_keeps_its_own(tmp_path: Path) -> None:
    cluster = LocalCluster(http_port=8000, ingress="direct", state_dir=tmp_path)
    cluster.proxy_port = 41234
    config = {"http_options": {"host": "127.0.0.1", "port": 8000}, "applications": []}
    served = cluster.served_document(config)
    assert served["http_options"] == {"host": "127.0.0.1", "port": 41234}
    assert config["http_options"]["port"] == 8000  # the caller's document is not changed
    assert LocalCluster(http_port=8000, state_dir=tmp_path).served_document(config) is config  # proxy ingress: as written
    with pytest.raises(ValueError, match="not this cluster's"):
        cluster.served_document({**config, "http_options": {"port": 9000}})


def _shipped() -> dict[str, Any]:
    return copy.deepcopy(load_serve_file("serve_config.yaml").document)


def test_the_shipped_config_fits_direct_ingress() -> None:
    assert load_serve_file("serve_config.yaml").direct_ingress_blocker() is None


def _two_apps(doc: dict[str, Any]) -> None:
    second = copy.deepcopy(doc["applications"][0])
    second.update(name="second", route_prefix="/second")
    doc["applications"].append(second)


def _router_replicas(doc: dict[str, Any]) -> None:
    doc["applications"][0]["args"]["router"]["num_replicas"] = 2


def _router_autoscales(doc: dict[str, Any]) -> None:
    router = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "router")
    router["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 3}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [(_two_apps, "2 applications"), (_router_replicas, "2 replicas"), (_router_autoscales, "router autoscales")],
)
def test_what_direct_ingress_cannot_serve_is_named(mutate: Callable[[dict[str, Any]], None], reason: str) -> None:
    doc = _shipped()
    mutate(doc)
    blocker = check_document(doc).direct_ingress_blocker()
    assert blocker is not None and reason in blocker


def test_run_with_direct_ingress_refuses_a_config_it_cannot_serve_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _shipped()
    _router_replicas(doc)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["run", str(path), "--ingress", "direct", "--state-dir", str(tmp_path / "state")]) == 2
    assert "2 replicas" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # nothing claimed, no token written


@pytest.mark.parametrize(
    ("requested", "blocker", "ingress"),
    [("auto", None, "direct"), ("auto", "two applications", "proxy"), ("direct", None, "direct"), ("proxy", None, "proxy")],
)
def test_the_ingress_is_chosen_as_asked(requested: str, blocker: str | None, ingress: str) -> None:
    assert choose_ingress(requested, blocker) == ingress


@pytest.mark.parametrize(
    ("total_gib", "expected_gib"),
    [(24, 20), (16, 12), (8, 4), (6, 3), (64, 64 - 64 / 6)],
)
def test_the_node_memory_resource_is_the_machine_less_a_reserve(total_gib: float, expected_gib: float) -> None:
    assert local.node_memory_bytes(int(total_gib * GIB)) == pytest.approx(expected_gib * GIB, abs=1)


def test_the_node_memory_resource_places_the_shipped_budgets_on_a_24_gib_machine() -> None:
    """Ray's own default (70% of the memory free at start) can fall below the shipped replicas'
    budgets on a machine whose memory is partly in use; the node's resource does not depend on it."""
    [app] = load_serve_file(ROOT / "serve_config.yaml").apps.values()
    budgets = sum(app.memory_budget_of(name) or 0 for name in app.args.deployments)
    assert 0 < budgets <= local.node_memory_bytes(24 * GIB)
