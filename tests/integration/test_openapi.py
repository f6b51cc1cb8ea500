"""schemathesis against the live service on 127.0.0.1, from its own /openapi.json: no server
error, and every status, content type, header and body it answers is the one the spec declares.
Bounded: a few examples per operation, derandomized, with a per-request timeout."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_openapi import CHECKS, OPERATIONS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_the_live_spec_lists_every_operation(live_schema: Any) -> None:
    assert sorted(OPERATIONS) == sorted((op.path, op.method.upper()) for op in (r.ok() for r in live_schema.get_all_operations()))


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_the_spec_drives_the_live_service(live_schema: Any, base_url: str, path: str, method: str, data: st.DataObject) -> None:
    case = data.draw(live_schema[path][method].as_strategy())
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
