"""What some models offer beyond ``BatchModel``'s three steps, declared as protocols.

Whoever drives a model (a Serve replica, the Ray Data actor, the benchmark) asks
``isinstance(model, Weighing)`` rather than probing attributes by name, so a typo or a renamed
method shows up as a type error rather than as a capability silently off. ``DecodesSmaller``
lives beside ``BatchModel`` in ``stylefleet.deployments.batching``, which asks it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from stylefleet.deployments.batching import ModelRequest
from stylefleet.deployments.memory import BatchLimiter


@runtime_checkable
class Weighing(Protocol):
    """Requests weigh more than 1 against ``max_batch_size`` (Stable Diffusion: pixels x steps)."""

    def weigh(self, request: ModelRequest) -> int: ...


@runtime_checkable
class Checksummed(Protocol):
    """The model knows the checksum of what it loaded (a diffusers folder has no registry entry)."""

    checksum: str


@runtime_checkable
class MemoryLimited(Protocol):
    """The model lowers its batch limit after an out-of-memory (the replica exports its figures)."""

    limiter: BatchLimiter


@runtime_checkable
class WarmsUp(Protocol):
    """The model runs each batch size it will be given before the first request, so its
    memory is touched at start rather than minutes into a load (onnx_session.warm)."""

    def warm_up(self, max_batch_size: int, max_batch_pixels: int | None) -> None: ...


@runtime_checkable
class Describing(Protocol):
    """The model adds its own figures to the replica's ``info()``."""

    def info(self) -> dict[str, Any]: ...

