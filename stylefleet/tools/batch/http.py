"""Sending one image to the service, with retries where retrying can help.

Retried, by the one policy (``stylefleet.retry``): connection errors, and the answers whose error
code's class is ``retryable`` (overloaded, model_unavailable, too_many_uploads, request_timeout)
or, without a stylefleet code, whose status is 429/502/503/504; ``Retry-After`` is honoured.
Never retried: the other 4xx (the input or the params are wrong, and will be wrong again) and 500
(the model failed on this input).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from stylefleet.retry import RetryPolicy, retryable_answer

__all__ = ["Outcome", "RetryPolicy", "StyleClient"]


class _RetryableAnswer(Exception):
    """An error answer the policy may retry; the last one becomes the item's outcome."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.headers = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else {}


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableAnswer))


@dataclass(frozen=True)
class Outcome:
    """What the service answered for one image, after retries."""

    ok: bool
    content: bytes = b""
    variant: str | None = None
    model_sha256: str | None = None
    seed: str | None = None
    nsfw: bool | None = None
    checks: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1


class StyleClient:
    """POSTs images (or a prompt line's params) to ``/v1/styles/{style}`` with fixed form fields (and extra files)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        style: str,
        fields: dict[str, str],
        extra_files: dict[str, bytes] | None = None,
        policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.style = style
        self.fields = fields
        self.extra_files = extra_files or {}
        self.policy = policy
        self.sleep = sleep
        self.rng = rng or random.Random()

    async def apply(self, name: str, data: bytes) -> Outcome:
        files = {"image": (name, data, "application/octet-stream")}
        files.update({k: (k, v, "application/octet-stream") for k, v in self.extra_files.items()})
        return await self._post(files, self.fields)

    async def generate(self, fields: dict[str, str]) -> Outcome:
        """A prompt-only style: the run's fields and this item's own (prompt, seed, ...), no image."""
        files = {k: (k, v, "application/octet-stream") for k, v in self.extra_files.items()}
        return await self._post(files or None, {**self.fields, **fields})

    async def _post(self, files: dict[str, tuple[str, bytes, str]] | None, fields: dict[str, str]) -> Outcome:
        attempts = 0

        async def once() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            r = await self.client.post(f"/v1/styles/{self.style}", files=files, data=fields)
            if r.status_code != 200 and retryable_answer(r.status_code, _error(r)[0]):
                raise _RetryableAnswer(r)
            return r

        try:
            r = await self.policy.run(once, retryable=_retryable, sleep=self.sleep, rng=self.rng)
        except httpx.TransportError as exc:
            return Outcome(False, error_code="connection_error", error_message=f"{type(exc).__name__}: {exc}", attempts=attempts)
        except _RetryableAnswer as exc:
            r = exc.response  # retries spent: the service's last word is the outcome
        return _outcome(r, attempts)


def _outcome(r: httpx.Response, attempts: int) -> Outcome:
    if r.status_code == 200:
        return Outcome(
            True,
            content=r.content,
            variant=r.headers.get("x-stylefleet-variant"),
            model_sha256=r.headers.get("x-stylefleet-model-sha256"),
            seed=r.headers.get("x-stylefleet-seed"),
            nsfw={"true": True, "false": False}.get(r.headers.get("x-stylefleet-nsfw", "")),
            checks=r.headers.get("x-stylefleet-checks"),
            attempts=attempts,
        )
    code, message = _error(r)
    return Outcome(
        False,
        variant=r.headers.get("x-stylefleet-variant"),
        error_code=code or f"http_{r.status_code}",
        error_message=message,
        attempts=attempts,
    )


def _error(r: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of an error answer; no code when the body is not a stylefleet error (a proxy's page)."""
    try:
        error = r.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return None, r.text[:200]
