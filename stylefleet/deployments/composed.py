"""Running a batch through a composed model: a model that asks other deployments, then composes.

Pure: the other deployments are reached through an injected ``call(role, request)`` coroutine
(deployment handles on a cluster; in-process models in the unit tests). Per batch:

1. ``prepare`` every request (in a worker thread: it may resize large photos);
2. send every request's sub-requests (one per role) at once, so the deployments behind the
   roles see the whole batch arrive together and batch it in turn; then the follow-up
   sub-requests that need those answers (``then``: id-photo mattes only the region its faces
   call for), again all at once;
3. ``compose`` and ``encode`` every request in one worker thread.

Each request fails alone: an error in any step, or from any role, is that request's reply.
The seconds spent in each step are added to ``StageClock`` (the benchmark reads them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel

from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, Reply, as_error, decoded
from stylefleet.errors import InternalError, StylefleetError

P = TypeVar("P")
Call = Callable[[str, ModelRequest], Awaitable[Reply]]


class ComposedModel(Protocol, Generic[P]):
    params_model: type[BaseModel]
    needs: Mapping[str, str]  # role -> the task of the deployment that plays it

    def prepare(self, request: ModelRequest) -> P: ...

    def calls(self, prepared: P) -> dict[str, ModelRequest]: ...

    def then(self, prepared: P, replies: Mapping[str, np.ndarray]) -> dict[str, ModelRequest]: ...

    def compose(self, prepared: P, replies: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def encode(self, prepared: P, pixels: np.ndarray, output: OutputSpec, model_sha256: str) -> EncodedImage: ...


class StageClock:
    """Seconds spent per stage, and how many requests went through it, since start."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()  # two batches may finish in two worker threads at once

    def add(self, name: str, seconds: float, requests: int = 1) -> None:
        with self._lock:
            self.seconds[name] += seconds
            self.requests[name] += requests

    @contextmanager
    def stage(self, name: str, requests: int = 1) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started, requests)

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: {"seconds": round(v, 4), "requests": self.requests[k]} for k, v in self.seconds.items()}


async def run_composed(
    model: ComposedModel[Any],
    requests: Sequence[ModelRequest],
    call: Call,
    clock: StageClock,
    model_sha256: str,
) -> list[Reply]:
    """The i-th reply is the i-th request's encoded image (or array, when output is None) or error."""
    prepared = await asyncio.to_thread(_prepare_all, model, requests, clock)
    started = time.perf_counter()
    replies = await asyncio.gather(*(_ask(model, p, call) if not isinstance(p, StylefleetError) else _same(p) for p in prepared))
    clock.add("wait", time.perf_counter() - started, len(requests))
    return await asyncio.to_thread(_finish_all, model, requests, prepared, replies, clock, model_sha256)


def _prepare_all(model: ComposedModel[Any], requests: Sequence[ModelRequest], clock: StageClock) -> list[Any]:
    out: list[Any] = []
    with clock.stage("prepare", len(requests)):
        for request in requests:
            try:
                out.append(model.prepare(decoded(model, request)))
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                out.append(as_error(exc))
    return out


async def _same(error: StylefleetError) -> StylefleetError:
    return error


async def _ask(model: ComposedModel[Any], prepared: Any, call: Call) -> dict[str, np.ndarray] | StylefleetError:
    """Every role's answer for one request (the first calls, then their follow-ups), or the first error."""
    out: dict[str, np.ndarray] = {}
    for stage in (model.calls, lambda p: model.then(p, out)):
        try:
            subs = stage(prepared)
        except Exception as exc:  # noqa: BLE001
            return as_error(exc)
        error = await _gather(subs, call, out)
        if error is not None:
            return error
    return out


async def _gather(subs: Mapping[str, ModelRequest], call: Call, out: dict[str, np.ndarray]) -> StylefleetError | None:
    """Ask every role in ``subs`` at once; their arrays go into ``out``. The first error, if any."""
    answers = await asyncio.gather(*(call(role, sub) for role, sub in subs.items()), return_exceptions=True)
    for role, answer in zip(subs, answers):
        if isinstance(answer, BaseException):
            return as_error(answer) if isinstance(answer, Exception) else InternalError(f"{role} was interrupted")
        if isinstance(answer, StylefleetError):
            return answer
        if not isinstance(answer, np.ndarray):
            return InternalError(f"the {role} deployment answered {type(answer).__name__}, not an array")
        out[role] = answer
    return None


def _finish_all(
    model: ComposedModel[Any],
    requests: Sequence[ModelRequest],
    prepared: Sequence[Any],
    replies: Sequence[dict[str, np.ndarray] | StylefleetError],
    clock: StageClock,
    model_sha256: str,
) -> list[Reply]:
    out: list[Reply] = []
    for request, p, reply in zip(requests, prepared, replies):
        if isinstance(reply, StylefleetError):
            out.append(reply)
            continue
        try:
            with clock.stage("compose"):
                pixels = model.compose(p, reply)
            if request.output is None:
                out.append(pixels)
                continue
            with clock.stage("encode"):
                out.append(model.encode(p, pixels, request.output, model_sha256))
        except Exception as exc:  # noqa: BLE001
            out.append(as_error(exc))
    return out
