"""The router's backend without a cluster: a deployment with no running replica is 503 at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from stylefleet.deployments.batching import ModelRequest
from stylefleet.errors import ModelUnavailable
from stylefleet.router import app as router_app
from stylefleet.router.app import ServeBackend
from stylefleet.router.health import DeploymentState


def _status(deployments: dict[str, tuple[str, dict[str, int]]]) -> Any:
    return SimpleNamespace(
        applications={
            "genai": SimpleNamespace(
                deployments={
                    name: SimpleNamespace(status=SimpleNamespace(value=status), replica_states=replicas)
                    for name, (status, replicas) in deployments.items()
                }
            )
        }
    )


class FakeHandle:
    def __init__(self) -> None:
        self.calls = 0

    def remote(self, request: ModelRequest) -> Any:
        self.calls += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.set_result("done")
        return future


@pytest.mark.parametrize(
    ("state", "serves"),
    [
        (("DEPLOY_FAILED", {}), False),
        (("UPDATING", {"STARTING": 1}), False),  # Serve still retrying the constructor
        (("UNHEALTHY", {"RUNNING": 0, "STOPPING": 1}), False),
        (("HEALTHY", {"RUNNING": 1}), True),
        (("UPDATING", {"RUNNING": 1, "STARTING": 1}), True),  # a rolling update keeps serving
    ],
    ids=["failed", "starting", "unhealthy", "healthy", "rolling-update"],
)
def test_requests_to_a_deployment_without_a_running_replica_are_refused_at_once(monkeypatch, state, serves: bool) -> None:
    monkeypatch.setattr(router_app.serve, "status", lambda: _status({"diffusion": state}))
    handle = FakeHandle()
    backend = ServeBackend({"diffusion": handle}, "genai")  # type: ignore[dict-item]

    async def call() -> Any:
        return await backend.run("diffusion", ModelRequest({}))

    if serves:
        assert asyncio.run(call()) == "done" and handle.calls == 1
    else:
        with pytest.raises(ModelUnavailable, match="no running replica"):
            asyncio.run(call())
        assert handle.calls == 0


def test_health_reports_each_deployment(monkeypatch) -> None:
    monkeypatch.setattr(
        router_app.serve, "status", lambda: _status({"router": ("HEALTHY", {"RUNNING": 1}), "diffusion": ("DEPLOY_FAILED", {})})
    )
    backend = ServeBackend({}, "genai")
    assert asyncio.run(backend.health()) == {"router": DeploymentState("HEALTHY", 1), "diffusion": DeploymentState("DEPLOY_FAILED", 0)}


class DyingHandle:
    """Fails its first ``deaths`` calls as a replica that died under them does; then answers."""

    def __init__(self, deaths: int) -> None:
        self.deaths = deaths
        self.calls = 0

    def remote(self, request: ModelRequest) -> Any:
        self.calls += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.calls <= self.deaths:
            future.set_exception(RuntimeError("ActorDiedError: the replica died"))
        else:
            future.set_result("done")
        return future


@pytest.fixture()
def healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_app.serve, "status", lambda: _status({"stylize": ("HEALTHY", {"RUNNING": 1})}))
    monkeypatch.setattr(ServeBackend, "RETRY_DELAY_S", 0.0)


def test_a_call_whose_replica_died_is_retried_once(healthy: None) -> None:
    handle = DyingHandle(deaths=1)
    backend = ServeBackend({"stylize": handle}, "genai")  # type: ignore[dict-item]
    assert asyncio.run(backend.run("stylize", ModelRequest({}))) == "done" and handle.calls == 2


def test_a_second_death_is_a_503_with_retry_after(healthy: None) -> None:
    handle = DyingHandle(deaths=2)
    backend = ServeBackend({"stylize": handle}, "genai")  # type: ignore[dict-item]
    with pytest.raises(ModelUnavailable) as caught:
        asyncio.run(backend.run("stylize", ModelRequest({})))
    assert handle.calls == 2 and caught.value.headers["Retry-After"] == "1"


class SilentHandle:
    def remote(self, request: ModelRequest) -> Any:
        return asyncio.get_running_loop().create_future()  # never answered: no replica ever comes


def test_a_call_nobody_answers_ends_before_serves_timeout_as_a_503(healthy: None) -> None:
    backend = ServeBackend({"stylize": SilentHandle()}, "genai", model_timeout_s=0.2)  # type: ignore[dict-item]

    async def call() -> Any:
        return await asyncio.wait_for(backend.run("stylize", ModelRequest({})), timeout=5)

    with pytest.raises(ModelUnavailable, match="did not answer within 0.2 s") as caught:
        asyncio.run(call())
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("state", "retry_after", "says"),
    [
        (("DEPLOY_FAILED", {}), "1", "no running replica (DEPLOY_FAILED)"),
        (("UNHEALTHY", {"STOPPING": 1}), "1", "no running replica (UNHEALTHY)"),
        # Starting replicas load and warm up for tens of seconds: a retrying client waits that out.
        (("UPDATING", {"STARTING": 1}), "10", "replicas are starting"),
        (("UPSCALING", {"STARTING": 1}), "10", "replicas are starting"),
    ],
)
def test_no_running_replica_is_a_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, state: tuple[str, dict[str, int]], retry_after: str, says: str
) -> None:
    monkeypatch.setattr(router_app.serve, "status", lambda: _status({"diffusion": state}))
    backend = ServeBackend({"diffusion": FakeHandle()}, "genai")  # type: ignore[dict-item]
    with pytest.raises(ModelUnavailable, match=says.replace("(", r"\(").replace(")", r"\)")) as caught:
        asyncio.run(backend.run("diffusion", ModelRequest({})))
    assert caught.value.headers["Retry-After"] == retry_after


def test_retry_after_survives_pickling_across_actors() -> None:
    import pickle

    restored = pickle.loads(pickle.dumps(ModelUnavailable("gone", retry_after_s=7)))
    assert restored.headers == {"Retry-After": "7"} and restored.message == "gone"


@pytest.mark.parametrize(
    ("state", "reads_after_3s"),
    [(("HEALTHY", {"RUNNING": 1}), 1), (("UPDATING", {"STARTING": 1}), 2)],
    ids=["all-running-kept-5s", "one-without-replica-kept-1s"],
)
def test_serve_status_is_read_less_often_while_every_deployment_runs(monkeypatch, state, reads_after_3s: int) -> None:
    """Without the cheap status read (another Ray): serve.status() once a second only while a
    deployment waits for a replica, every 5 s otherwise."""
    monkeypatch.setattr(router_app, "serve_statuses", lambda app: None)
    reads: list[int] = []
    monkeypatch.setattr(router_app.serve, "status", lambda: reads.append(1) or _status({"diffusion": state}))
    now = [1000.0]
    monkeypatch.setattr(router_app.time, "monotonic", lambda: now[0])
    backend = ServeBackend({}, "genai")
    asyncio.run(backend.health())
    now[0] += 3.0  # past STATUS_CACHE_S, within STATUS_CACHE_HEALTHY_S
    asyncio.run(backend.health())
    assert len(reads) == reads_after_3s
    now[0] += 3.0  # past both
    asyncio.run(backend.health())
    assert len(reads) == reads_after_3s + 1


def _clocked_backend(
    monkeypatch: pytest.MonkeyPatch, whole: dict[str, tuple[str, dict[str, int]]], cheap: dict[str, str]
) -> tuple[ServeBackend, list[float]]:
    """A backend whose whole status is ``whole`` and whose cheap per-deployment status is ``cheap``
    (both dicts may be changed by the test), on a clock the test moves."""
    monkeypatch.setattr(router_app.serve, "status", lambda: _status(whole))
    monkeypatch.setattr(router_app, "serve_statuses", lambda app: dict(cheap))
    now = [1000.0]
    monkeypatch.setattr(router_app.time, "monotonic", lambda: now[0])
    return ServeBackend({"stylize": FakeHandle()}, "genai"), now  # type: ignore[dict-item]


def test_while_statuses_hold_the_whole_status_is_read_only_every_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {"stylize": ("HEALTHY", {"RUNNING": 2}), "router": ("HEALTHY", {"RUNNING": 1})}
    backend, now = _clocked_backend(monkeypatch, whole, {"stylize": "HEALTHY", "router": "HEALTHY"})
    for _ in range(29):  # a request every second for 29 s
        asyncio.run(backend.run("stylize", ModelRequest({})))
        now[0] += 1.0
    assert backend.full_reads == 1
    now[0] += 1.0  # the counts are now FULL_STATUS_MAX_AGE_S old
    asyncio.run(backend.health())
    assert backend.full_reads == 2


def test_a_deployment_that_loses_its_last_replica_is_refused_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {"stylize": ("HEALTHY", {"RUNNING": 1})}
    cheap = {"stylize": "HEALTHY"}
    backend, now = _clocked_backend(monkeypatch, whole, cheap)
    asyncio.run(backend.run("stylize", ModelRequest({})))
    whole["stylize"] = ("UNHEALTHY", {"RUNNING": 0, "STARTING": 1})
    cheap["stylize"] = "UNHEALTHY"
    now[0] += ServeBackend.STATUS_CACHE_S
    with pytest.raises(ModelUnavailable, match="no running replica"):
        asyncio.run(backend.run("stylize", ModelRequest({})))
    assert backend.full_reads == 2


def test_counts_are_read_each_second_while_a_deployment_waits_for_a_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {"stylize": ("UPDATING", {"STARTING": 1})}
    backend, now = _clocked_backend(monkeypatch, whole, {"stylize": "UPDATING"})
    for _ in range(3):
        asyncio.run(backend.health())
        now[0] += ServeBackend.STATUS_CACHE_S
    assert backend.full_reads == 3
    whole["stylize"] = ("UPDATING", {"RUNNING": 1})  # same status, now with a replica: served
    asyncio.run(backend.run("stylize", ModelRequest({})))
