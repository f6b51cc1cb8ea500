"""The shipped configs and the HTTP API over a fake backend, as the unit tests build them."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi.testclient import TestClient

from stylefleet.config import Limits
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import Backend, RouterCore
from stylefleet.spec import AppSpec
from tests.samples import ROOT


def shipped_args(config_file: str = "serve_config.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / config_file).read_text())["applications"][0]["args"]


def api_client(backend: Backend, config_file: str = "serve_config.yaml", limits: Limits | None = None) -> TestClient:
    """The real FastAPI app over ``backend``, for a shipped config."""
    limits = limits or Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000)
    core = RouterCore(Catalog(AppSpec.from_args(shipped_args(config_file))), backend, max_pixels=limits.max_pixels)
    return TestClient(create_api(core, limits))
