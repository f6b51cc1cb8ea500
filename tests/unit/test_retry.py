"""The one retry policy (``stylefleet.retry``) and the ``retryable`` attribute of the error classes."""

from __future__ import annotations

import asyncio
import random

import pytest

from stylefleet import errors
from stylefleet.errors import (
    InternalError,
    InvalidImage,
    InvalidParams,
    ModelUnavailable,
    NoFace,
    Overloaded,
    RequestTimeout,
    StylefleetError,
    TooManyUploads,
    UnknownStyle,
    UploadsBusy,
)
from stylefleet.retry import RetryPolicy, retry_after_s, retryable_answer


@pytest.mark.parametrize(("cls", "retryable"), [
    (Overloaded, True), (ModelUnavailable, True), (TooManyUploads, True), (UploadsBusy, True), (RequestTimeout, True),
    (InvalidImage, False), (InvalidParams, False), (NoFace, False), (UnknownStyle, False), (InternalError, False),
])
def test_each_error_class_says_whether_to_retry(cls: type[StylefleetError], retryable: bool) -> None:
    assert cls.retryable is retryable
    assert errors.is_retryable(cls("x")) is retryable


def test_the_retryable_codes_are_derived_from_the_classes() -> None:
    retryable = {"overloaded", "model_unavailable", "too_many_uploads", "uploads_busy", "request_timeout", "service_stopping"}
    assert retryable == errors.RETRYABLE_CODES
    table = {row["code"]: row for row in errors.describe_codes()}
    assert table["overloaded"] == {"code": "overloaded", "status": 503, "retryable": True}
    assert table["invalid_prompt_line"] == {"code": "invalid_prompt_line", "status": 422, "retryable": False}
    assert {c for c, row in table.items() if row["retryable"]} == errors.RETRYABLE_CODES


@pytest.mark.parametrize(("status", "code", "retry"), [
    (503, "overloaded", True),
    (503, "model_unavailable", True),
    (429, "too_many_uploads", True),
    (500, "internal_error", False),
    (400, "invalid_image", False),
    (422, "invalid_params", False),
    (502, None, True),  # a proxy's page, no stylefleet code: judged by status
    (504, None, True),
    (500, None, False),
    (404, None, False),
])
def test_an_http_answer_is_judged_by_its_code_else_its_status(status: int, code: str | None, retry: bool) -> None:
    assert retryable_answer(status, code) is retry


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_stays_within_its_jittered_bounds(attempt: int) -> None:
    policy, rng = RetryPolicy(base_s=0.5, cap_s=10.0), random.Random(attempt)
    ceiling = min(10.0, 0.5 * 2**attempt)
    delays = [policy.delay_s(attempt, None, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10  # jittered, not one fixed value


@pytest.mark.parametrize(("retry_after", "low", "high"), [
    ("7", 7.0, 7.1),  # longer than the backoff: the server's word is the floor
    ("0", 0.25, 0.6),  # shorter: the backoff (0.25-0.5 s at attempt 0) still applies
    ("3600", 30.0, 30.1),  # capped
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.25, 0.5),  # an HTTP date: the backoff
    (None, 0.25, 0.5),
])
def test_retry_after_is_honoured(retry_after: str | None, low: float, high: float) -> None:
    delay = RetryPolicy().delay_s(0, retry_after, random.Random(1))
    assert low <= delay <= high


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("1.5", 1.5), ("-3", 0.0), ("soon", None), ("nan", None), (None, None)])
def test_retry_after_is_read_as_delta_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds


def _run(policy: RetryPolicy, script: list[BaseException | str]) -> tuple[object, int, list[float]]:
    """Runs ``policy`` over a call that raises or returns the script's entries in turn."""
    calls, sleeps = 0, []

    async def call() -> str:
        nonlocal calls
        item = script[calls]
        calls += 1
        if isinstance(item, BaseException):
            raise item
        return item

    async def sleep(s: float) -> None:
        sleeps.append(s)

    try:
        result: object = asyncio.run(policy.run(call, sleep=sleep, rng=random.Random(2)))
    except StylefleetError as exc:
        result = exc
    return result, calls, sleeps


def test_a_non_retryable_error_stops_at_once() -> None:
    bad = InvalidImage("not a picture")
    result, calls, sleeps = _run(RetryPolicy(retries=5), [bad, "never reached"])
    assert result is bad and calls == 1 and sleeps == []


def test_retryable_errors_are_retried_until_one_succeeds_waiting_their_retry_after() -> None:
    result, calls, sleeps = _run(RetryPolicy(retries=5), [Overloaded("busy", retry_after_s=4), ModelUnavailable("loading"), "ok"])
    assert result == "ok" and calls == 3
    assert 4.0 <= sleeps[0] <= 4.1 and 1.0 <= sleeps[1] <= 1.1


def test_the_last_retryable_error_is_raised_once_the_retries_are_spent() -> None:
    busy = [Overloaded(f"busy {i}", retry_after_s=0) for i in range(5)]
    result, calls, sleeps = _run(RetryPolicy(retries=2), [*busy])
    assert result is busy[2] and calls == 3 and len(sleeps) == 2


def test_a_retry_after_a_retryable_error_can_still_fail_for_good() -> None:
    bad = InvalidParams("strength: too big")
    result, calls, _ = _run(RetryPolicy(retries=5), [Overloaded("busy", retry_after_s=0), bad, "never reached"])
    assert result is bad and calls == 2
