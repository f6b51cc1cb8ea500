"""A/B assignment: weighted, sticky variants per style. Pure: no Ray, no process state.

A client key is hashed with the style name (SHA-256, never Python's salted ``hash``), so the
same client lands on the same variant in every process and after every restart, for as long as
the weights stay put; over many keys the shares match the weights. Requests without a key are
split at random by weight. Variants are walked in name order so the mapping does not depend on
the order a config happens to list them in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from stylefleet.errors import InvalidParams

_SCALE = float(1 << 64)


def key_point(style: str, key: str) -> float:
    """A point in [0, 1) fixed by (style, key)."""
    digest = hashlib.sha256(f"{style}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def pick(point: float, weights: Mapping[str, float]) -> str:
    """The variant whose share of [0, 1) contains ``point``. Zero weights own an empty share."""
    total = sum(weights.values())
    target = point * total
    cumulative = 0.0
    last_positive = ""
    for name in sorted(weights):
        weight = weights[name]
        if weight <= 0:
            continue
        cumulative += weight
        last_positive = name
        if target < cumulative:
            return name
    return last_positive  # only reached through float rounding at the very top of the range


def choose_variant(
    style: str,
    weights: Mapping[str, float],
    *,
    client_key: str | None = None,
    forced: str | None = None,
    rng: random.Random | None = None,
) -> str:
    """The variant for one request: forced > sticky by client key > random by weight."""
    if forced is not None:
        if forced not in weights:
            raise InvalidParams(f"variant: {forced!r} is not a variant of {style!r}; it has {', '.join(sorted(weights))}")
        return forced
    if client_key:
        return pick(key_point(style, client_key), weights)
    return pick((rng or random).random(), weights)

