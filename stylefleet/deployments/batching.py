"""Running one batch of requests through a model with per-item isolation. Pure: no Ray.

A model splits its work in three steps so that the batch runner can isolate failures:

- ``prepare(request)``: validate and preprocess one request; returns a ``Prepared`` whose
  ``key`` says which requests may share a network call (same style, same tensor size);
- ``infer(group)``: one network call for a group of prepared requests with equal keys;
- ``finish(prepared, raw)``: postprocess one result into an HxWxC uint8 array.

Uploads travel as the client sent them (``ModelRequest.files``, encoded bytes) and are decoded
here, in the model's replica, just before ``prepare``: the router never decodes, so the data
plane scales with model replicas, and a JPEG larger than the model's output is decoded at a
reduced scale (``stylefleet.imageio.decode``'s ``max_side``).

A request that fails in decoding, ``prepare`` or ``finish`` gets its own error. A group whose network call
raises is retried one request at a time, so a poisoned input fails alone and its batch mates
still get their results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ValidationError

from stylefleet.deployments.memory import chunks, releasing_arena
from stylefleet.errors import InternalError, InvalidParams, StylefleetError
from stylefleet.imageio import CONTENT_TYPES, MAX_DRAFT_REDUCTION, OutputFormat, decode, encode, probe, scaled_size

logger = logging.getLogger(__name__)


DEFAULT_MAX_PIXELS = 40_000_000  # Limits.max_pixels' default


@dataclass(frozen=True)
class OutputSpec:
    """How to encode the result; ``None`` on a request means: return the array itself."""

    format: OutputFormat = "png"
    quality: int = 90


@dataclass
class ModelRequest:
    """What a model deployment is sent: images by field name, and params.

    ``files`` holds uploads still encoded (the router sends those); ``images`` decoded arrays
    (composed deployments, the Ray Data engine, tests). ``max_pixels`` bounds what ``files``
    may decode to.
    """

    images: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    output: OutputSpec | None = None
    keep_pixels: bool = False  # also return the array with the encoded bytes (shadow comparison)
    files: dict[str, bytes] = field(default_factory=dict)
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    model_sha256: str
    pixels: np.ndarray | None = None
    nsfw: bool | None = None  # a safety checker's verdict (True: flagged, blacked out); None: none ran
    checks: str | None = None  # id-photo: the quality findings, comma-separated, or "pass"; None: none ran


class SafetyChecked(np.ndarray):
    """A model's output image that a safety checker looked at; ``nsfw`` is its verdict.
    ``encode_outcomes`` carries the verdict onto the ``EncodedImage``."""

    nsfw: bool = False


def safety_checked(image: np.ndarray, nsfw: bool) -> SafetyChecked:
    out = image.view(SafetyChecked)
    out.nsfw = nsfw
    return out


P = TypeVar("P", bound="Prepared")


class Prepared(Protocol):
    key: Hashable


class BatchModel(Protocol, Generic[P]):
    """What ``run_batch`` drives. A model may also offer ``decode_side(params) -> int | None``:
    the longer side its ``image`` is scaled down to first, so uploads decode no larger."""

    params_model: type[BaseModel]

    def prepare(self, request: ModelRequest) -> P: ...

    def infer(self, group: Sequence[P]) -> Sequence[Any]: ...

    def finish(self, prepared: P, raw: Any) -> np.ndarray: ...


Outcome = np.ndarray | StylefleetError
Reply = np.ndarray | EncodedImage | StylefleetError


def validate_params(params_model: type[BaseModel], params: dict[str, Any]) -> Any:
    """Validate params into the model's pydantic type; any problem is a 422 naming the field."""
    try:
        return params_model.model_validate(params)
    except ValidationError as exc:
        raise InvalidParams(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "params"
        msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


@runtime_checkable
class DecodesSmaller(Protocol):
    """An optional capability (``stylefleet.deployments.capabilities`` has the others): the longer side the
    model scales its ``image`` down to first (None: full size), so uploads decode no larger."""

    def decode_side(self, params: dict[str, Any]) -> int | None: ...


def output_side(model: Any, params: dict[str, Any]) -> int | None:
    """The longer side a model scales its ``image`` down to before anything else, for these
    params, or None: the size decoding may aim at."""
    return model.decode_side(params) if isinstance(model, DecodesSmaller) else None


def decoded(model: Any, request: ModelRequest) -> ModelRequest:
    """The request with its ``files`` decoded into ``images`` for this model (typed errors for bad files)."""
    if not request.files:
        return request
    return decode_files(request, output_side(model, request.params))


def decode_files(request: ModelRequest, side: int | None = None) -> ModelRequest:
    """``files`` decoded into ``images``; ``image`` no larger than needed for ``side`` (JPEG)."""
    images = dict(request.images)
    for name, data in request.files.items():
        images[name] = decode(data, max_pixels=request.max_pixels, field=name, max_side=side if name == "image" else None).pixels
    return replace(request, images=images, files={})


def request_pixels(model: Any, request: ModelRequest) -> int:
    """Pixels the request's images will have once decoded and scaled: what it weighs against
    a replica's pixel budget. Reads only headers; raises the typed error of a bad file."""
    return request_footprint(model, request)[0]


def request_footprint(model: Any, request: ModelRequest) -> tuple[int, int]:
    """(pixels after max_side, pixels its uploads decode to before scaling), from the headers: a
    JPEG larger than its target decodes at libjpeg's reduced scale (``decode``), any other format
    at full size. What a replica's memory admission estimates a request by. Raises the typed
    error of a bad file."""
    side = output_side(model, request.params)
    total = decoded_total = 0
    for name, data in request.files.items():
        header = probe(data, max_pixels=request.max_pixels, field=name)
        field_side = side if name == "image" else None
        w, h = scaled_size(header.width, header.height, field_side)
        total += w * h
        decoded_total += decoded_pixels(header.width, header.height, header.format, field_side)
    for name, pixels in request.images.items():
        w, h = scaled_size(pixels.shape[1], pixels.shape[0], side if name == "image" else None)
        total += w * h
    return total, decoded_total


def decoded_pixels(width: int, height: int, source_format: str, side: int | None) -> int:
    """Pixels ``stylefleet.imageio.decode`` holds for an upload of this size and format, before
    scaling to ``side``: libjpeg decodes a large JPEG at 1/2 or 1/4 scale, never below the target."""
    if not side or source_format != "JPEG" or max(width, height) <= side:
        return width * height
    wanted = max(side / max(width, height), 1 / MAX_DRAFT_REDUCTION)
    scale = 1.0
    while scale / 2 >= wanted:
        scale /= 2
    return math.ceil(width * scale) * math.ceil(height * scale)


@dataclass
class PreparedBatch:
    """A batch after decoding and ``prepare``: errors so far, and the groups that share a call."""

    outcomes: list[Outcome | None]
    groups: dict[Hashable, list[tuple[int, Any]]]
    release_arena: bool = False  # one image over the pixel budget: give the arena back after it


def infer_batch(model: BatchModel[Any], batch: PreparedBatch) -> list[Outcome]:
    """One network call per group, then ``finish``; a group whose call raises is retried one
    request at a time, so a poisoned input fails alone."""
    if batch.release_arena:
        with releasing_arena():
            return _infer_groups(model, batch)
    return _infer_groups(model, batch)


def _infer_groups(model: BatchModel[Any], batch: PreparedBatch) -> list[Outcome]:
    outcomes = list(batch.outcomes)
    for members in batch.groups.values():
        try:
            raws = list(model.infer([p for _, p in members]))
        except Exception as exc:  # noqa: BLE001
            if len(members) == 1:
                outcomes[members[0][0]] = as_error(exc)
                continue
            logger.warning("batch of %d failed (%s); retrying one by one", len(members), exc)
            raws = []
            for i, p in members:
                try:
                    raws.append(model.infer([p])[0])
                except Exception as single_exc:  # noqa: BLE001
                    outcomes[i] = as_error(single_exc)
                    raws.append(None)
        for (i, p), raw in zip(members, raws):
            if outcomes[i] is not None:
                continue
            try:
                outcomes[i] = model.finish(p, raw)
            except Exception as exc:  # noqa: BLE001
                outcomes[i] = as_error(exc)
    return [o if o is not None else InternalError("no result was produced") for o in outcomes]


def run_batch(model: BatchModel[Any], requests: Sequence[ModelRequest]) -> list[Outcome]:
    """Run a batch; the i-th outcome is the i-th request's image or its own error."""
    return infer_prepared(model, [prepare_one(model, r) for r in requests], [0] * len(requests), None)


def prepare_one(model: BatchModel[Any], request: ModelRequest) -> Any:
    """Decode and ``prepare`` one request: its prepared form, or its own error (returned)."""
    try:
        return model.prepare(decoded(model, request))
    except Exception as exc:  # noqa: BLE001 - isolation is the point
        return as_error(exc)


def infer_prepared(
    model: BatchModel[Any], prepared: Sequence[Any], pixels: Sequence[int], budget: int | None
) -> list[Outcome]:
    """Run prepared requests (a ``prepare_one`` error passes through as that request's outcome)
    in consecutive chunks of at most ``budget`` pixels: one chunk, when the queue formed the batch
    under the same budget. An image over the whole budget is a chunk alone, and its call gives the
    arena back when it ends, so a replica's memory stays at what the budget needs."""
    outcomes: list[Outcome] = [InternalError("no result was produced")] * len(prepared)
    indexed = list(enumerate(pixels))
    for chunk in chunks(indexed, budget, lambda x: x[1]) if budget else [indexed]:
        batch = PreparedBatch([None] * len(chunk), {})
        for j, (i, _) in enumerate(chunk):
            if isinstance(prepared[i], StylefleetError):
                batch.outcomes[j] = prepared[i]
            else:
                batch.groups.setdefault(prepared[i].key, []).append((j, prepared[i]))
        batch.release_arena = bool(budget) and sum(p for _, p in chunk) > budget  # type: ignore[operator]
        for (i, _), outcome in zip(chunk, infer_batch(model, batch)):
            outcomes[i] = outcome
    return outcomes


def as_error(exc: Exception) -> StylefleetError:
    if isinstance(exc, StylefleetError):
        return exc
    logger.error("model failure", exc_info=exc)
    return InternalError("the model failed on this input; the error was logged")



def encode_outcomes(
    requests: Sequence[ModelRequest], outcomes: Sequence[Outcome], model_sha256: str
) -> list[Reply]:
    """Encode each successful outcome whose request asked for bytes; errors pass through."""
    replies: list[Reply] = []
    for request, outcome in zip(requests, outcomes):
        if isinstance(outcome, StylefleetError) or request.output is None:
            replies.append(outcome)
            continue
        try:
            data = encode(outcome, request.output.format, request.output.quality)
        except Exception as exc:  # noqa: BLE001
            replies.append(as_error(exc))
            continue
        h, w = outcome.shape[:2]
        pixels = outcome if request.keep_pixels else None
        nsfw = outcome.nsfw if isinstance(outcome, SafetyChecked) else None
        replies.append(EncodedImage(data, CONTENT_TYPES[request.output.format], w, h, model_sha256, pixels, nsfw))
    return replies
