"""restyle keeps each style picture's vector: a picture seen before skips its predict call, and
the bytes are the same as a fresh computation's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stylefleet.deployments import restyle
from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, run_batch
from stylefleet.deployments.registry import resolve
from stylefleet.deployments.restyle import ArbitraryStyleModel, StyleVectors
from tests import samples


def _fresh(runtime: Any) -> ArbitraryStyleModel:
    return ArbitraryStyleModel(resolve("arbitrary_predict"), resolve("arbitrary_transform"), runtime)


def _png(model: ArbitraryStyleModel, requests: list[ModelRequest], index: int = 0) -> bytes:
    return encode_outcomes(requests, run_batch(model, requests), "x")[index].data  # type: ignore[union-attr]


def _request(style: np.ndarray, **params: Any) -> ModelRequest:
    return ModelRequest({"image": samples.astronaut(), "style_image": style}, params, OutputSpec("png"))


@pytest.fixture()
def predict_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every arbitrary_predict call (the network with one input)."""
    sizes: list[int] = []
    real = restyle.run

    def counting(session: Any, feeds: dict[str, np.ndarray]) -> Any:
        if len(feeds) == 1:
            sizes.append(len(next(iter(feeds.values()))))
        return real(session, feeds)

    monkeypatch.setattr(restyle, "run", counting)
    return sizes


def test_the_least_recently_used_vector_goes_first() -> None:
    kept = StyleVectors(capacity=2)
    a, b, c = (StyleVectors.key(np.full((4, 4, 3), v, np.uint8)) for v in (1, 2, 3))
    kept.put(a, np.zeros(100, np.float32))
    kept.put(b, np.ones(100, np.float32))
    assert kept.get(a) is not None  # a is now the most recent
    kept.put(c, np.ones(100, np.float32))
    assert kept.get(b) is None and kept.get(a) is not None and kept.get(c) is not None
    assert kept.info() == {"kept": 2, "capacity": 2, "hits": 3, "misses": 1}


def test_the_key_is_the_pixels_and_their_shape() -> None:
    flat = np.zeros((4, 6, 3), np.uint8)
    assert StyleVectors.key(flat) == StyleVectors.key(flat.copy())
    assert StyleVectors.key(flat) != StyleVectors.key(flat.reshape(6, 4, 3))
    changed = flat.copy()
    changed[0, 0, 0] = 1
    assert StyleVectors.key(flat) != StyleVectors.key(changed)


def test_a_kept_vector_cannot_be_changed_by_whoever_reads_it() -> None:
    kept = StyleVectors()
    key = StyleVectors.key(np.zeros((2, 2, 3), np.uint8))
    kept.put(key, np.zeros(100, np.float32))
    vector = kept.get(key)
    assert vector is not None and not vector.flags.writeable


def test_a_style_picture_seen_before_skips_its_predict_call(runtime: Any, predict_batches: list[int]) -> None:
    model = _fresh(runtime)
    first = _png(model, [_request(samples.cat())])
    assert predict_batches == [1]
    again = _png(model, [_request(samples.cat())])
    assert predict_batches == [1]  # no second predict call
    assert again == first
    assert model.info()["style_vectors"] == {"kept": 1, "capacity": restyle.STYLE_VECTORS_KEPT, "hits": 1, "misses": 1}


def test_a_batch_runs_predict_for_its_new_pictures_only(runtime: Any, predict_batches: list[int]) -> None:
    model = _fresh(runtime)
    _png(model, [_request(samples.cat())])
    batch = [_request(samples.cat()), _request(samples.coffee()), _request(samples.cat())]
    together = [encoded.data for encoded in encode_outcomes(batch, run_batch(model, batch), "x")]  # type: ignore[union-attr]
    assert predict_batches == [1, 1]  # the coffee alone
    assert together[0] == together[2] == _png(_fresh(runtime), [_request(samples.cat())])
    assert together[1] == _png(_fresh(runtime), [_request(samples.coffee())])


def test_strength_below_one_mixes_the_photos_own_style_with_a_kept_vector(runtime: Any, predict_batches: list[int]) -> None:
    model = _fresh(runtime)
    _png(model, [_request(samples.cat())])
    mixed = _png(model, [_request(samples.cat(), strength=0.5)])
    assert predict_batches == [1, 1]  # the second call: the photo's own style only
    assert mixed == _png(_fresh(runtime), [_request(samples.cat(), strength=0.5)])


def test_the_vector_is_the_same_whatever_batch_computed_it(runtime: Any) -> None:
    """What makes a kept vector safe: predict gives the same bytes alone and inside a batch."""
    target = _request(samples.cat())
    filler = [_request(samples.coffee()) for _ in range(7)]
    batch = filler[:3] + [target] + filler[3:]
    assert _png(_fresh(runtime), batch, 3) == _png(_fresh(runtime), [target])
