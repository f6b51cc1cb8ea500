"""The OpenAPI document tells the truth: request bodies, image responses, the error model, every
status; and schemathesis, driving the API from it (fake backend, no Ray), finds nothing it does
not declare."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from stylefleet.config import Limits
from stylefleet.router.api.application import create_api
from stylefleet.storage import Storage
from tests.unit.fakes import FakeBackend, from_pixels
from tests.unit.test_jobs import _manager

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    manager = _manager(FakeBackend(from_pixels), Storage(str(tmp_path_factory.mktemp("jobs"))))
    yield create_api(manager.core, Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000), jobs=manager)
    manager.stop()


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _errors(operation: dict[str, Any]) -> set[str]:
    return {s for s, r in operation["responses"].items() if "ErrorBody" in str(r)}


def test_style_requests_declare_their_multipart_body_and_image_answers(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/v1/styles/{style_name}"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"] == {"type": "string", "format": "binary"} and "style_image" in form["properties"]
    assert "application/json" in op["requestBody"]["content"]  # text-to-image styles
    assert set(op["responses"]["200"]["content"]) >= {"image/png", "image/jpeg", "image/webp"}
    assert "application/json" not in op["responses"]["200"]["content"]
    assert _errors(op) == {"400", "404", "408", "413", "415", "422", "429", "500", "503"}
    assert "Retry-After" in op["responses"]["503"]["headers"]


def test_job_creation_declares_its_body(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/v1/jobs"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["style"] and form["properties"]["images"]["type"] == "array"
    assert "Job" in str(op["responses"]["202"]) and _errors(op) >= {"400", "404", "413", "415", "422"}


def test_no_route_declares_fastapis_validation_shape(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]["$ref"].endswith("/ErrorDetail")


OPERATIONS = [
    ("/v1/styles", "GET"),
    ("/v1/styles/{style_name}/preview", "GET"),
    ("/v1/shadow", "GET"),
    ("/v1/errors", "GET"),
    ("/v1/styles/{style_name}", "POST"),
    ("/healthz/live", "GET"),
    ("/healthz/ready", "GET"),
    ("/healthz", "GET"),
    ("/v1/jobs", "POST"),
    ("/v1/jobs/{job_id}", "GET"),
    ("/v1/jobs/{job_id}/events", "GET"),
    ("/v1/jobs/{job_id}/result", "GET"),
    ("/v1/jobs/{job_id}", "DELETE"),
]


def test_every_operation_is_driven(spec: dict[str, Any]) -> None:
    assert sorted(OPERATIONS) == sorted((path, method.upper()) for path, item in spec["paths"].items() for method in item)


@pytest.fixture(scope="module")
def asgi_schema(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_the_spec_drives_the_api(asgi_schema: Any, path: str, method: str, data: st.DataObject) -> None:
    case = data.draw(asgi_schema[path][method].as_strategy())
    # the fake backend reports no deployment, so readiness is its declared 503
    case.call_and_validate(checks=CHECKS[1:] if path.startswith("/healthz") else CHECKS)
