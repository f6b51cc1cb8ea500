"""Running one batch of requests through a model with per-item isolation. Pure: no Ray.

A model splits its work in three steps so that the batch runner can isolate failures:

- ``prepare(request)``: validate and preprocess one request; returns a ``Prepared`` whose
  ``key`` says which requests may share a network call (same style, same tensor size);
- ``infer(group)``: one network call for a group of prepared requests with equal keys;
- ``finish(prepared, raw)``: postprocess one result into an HxWxC uint8 array.

A request that fails in ``prepare`` or ``finish`` gets its own error. A group whose network call
raises is retried one request at a time, so a poisoned input fails alone and its batch mates
still get their results.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from stylefleet.errors import InternalError, InvalidParams, StylefleetError
from stylefleet.imageio import CONTENT_TYPES, OutputFormat, encode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputSpec:
    """How to encode the result; ``None`` on a request means: return the array itself."""

    format: OutputFormat = "png"
    quality: int = 90


@dataclass
class ModelRequest:
    """What the router sends a model deployment: decoded images by field name, and params."""

    images: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    output: OutputSpec | None = None
    keep_pixels: bool = False  # also return the array with the encoded bytes (shadow comparison)


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    width: int
    height: int
    model_sha256: str
    pixels: np.ndarray | None = None
    nsfw: bool | None = None  # a safety checker's verdict (True: flagged, blacked out); None: none ran


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


def run_batch(model: BatchModel[Any], requests: Sequence[ModelRequest]) -> list[Outcome]:
    """Run a batch; the i-th outcome is the i-th request's image or its own error."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, Any]]] = {}
    for i, request in enumerate(requests):
        try:
            prepared = model.prepare(request)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            outcomes[i] = as_error(exc)
            continue
        groups.setdefault(prepared.key, []).append((i, prepared))

    for members in groups.values():
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
