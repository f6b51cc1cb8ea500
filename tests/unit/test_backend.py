"""The router's backend without a cluster: a deployment with no running replica is 503 at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.batching import ModelRequest
from router import app as router_app
from router.app import ServeBackend
from router.health import DeploymentState
from stylefleet.errors import ModelUnavailable


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
    monkeypatch.setattr(router_app.serve, "status", lambda: _status({"router": ("HEALTHY", {"RUNNING": 1}), "diffusion": ("DEPLOY_FAILED", {})}))
    backend = ServeBackend({}, "genai")
    assert asyncio.run(backend.health()) == {"router": DeploymentState("HEALTHY", 1), "diffusion": DeploymentState("DEPLOY_FAILED", 0)}
