"""Unit tier: no Ray. Any attempt to start or join a cluster fails the test loudly."""

from __future__ import annotations

import pytest

from stylefleet.deployments.onnx_session import RuntimeOptions


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def runtime() -> RuntimeOptions:
    return RuntimeOptions(device="cpu", threads=1)
