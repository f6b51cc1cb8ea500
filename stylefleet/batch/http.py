"""Sending one image to the service, with retries where retrying can help.

Retried, with exponential backoff and jitter: 429 and 502/503/504 (honouring ``Retry-After``)
and connection errors. Never retried: other 4xx (the input or the params are wrong, and will be
wrong again) and 500 (the model failed on this input).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay_s(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds before retry number ``attempt`` (0-based): the server's Retry-After when it
        gives one (delta-seconds), else full-jitter exponential backoff."""
        if retry_after is not None:
            try:
                return min(self.cap_s, max(0.0, float(retry_after))) + rng.uniform(0, 0.1)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return rng.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2**attempt)


@dataclass(frozen=True)
class Outcome:
    """What the service answered for one image, after retries."""

    ok: bool
    content: bytes = b""
    variant: str | None = None
    model_sha256: str | None = None
    seed: str | None = None
    nsfw: bool | None = None
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
        attempt = 0
        while True:
            try:
                r = await self.client.post(f"/v1/styles/{self.style}", files=files, data=fields)
            except httpx.TransportError as exc:
                if attempt >= self.policy.retries:
                    return Outcome(False, error_code="connection_error", error_message=f"{type(exc).__name__}: {exc}", attempts=attempt + 1)
                await self.sleep(self.policy.delay_s(attempt, None, self.rng))
                attempt += 1
                continue
            if r.status_code in RETRY_STATUSES and attempt < self.policy.retries:
                await self.sleep(self.policy.delay_s(attempt, r.headers.get("retry-after"), self.rng))
                attempt += 1
                continue
            return _outcome(r, attempt + 1)


def _outcome(r: httpx.Response, attempts: int) -> Outcome:
    if r.status_code == 200:
        return Outcome(
            True,
            content=r.content,
            variant=r.headers.get("x-stylefleet-variant"),
            model_sha256=r.headers.get("x-stylefleet-model-sha256"),
            seed=r.headers.get("x-stylefleet-seed"),
            nsfw={"true": True, "false": False}.get(r.headers.get("x-stylefleet-nsfw", "")),
            attempts=attempts,
        )
    try:
        error = r.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{r.status_code}", r.text[:200]
    return Outcome(False, variant=r.headers.get("x-stylefleet-variant"), error_code=code, error_message=message, attempts=attempts)
