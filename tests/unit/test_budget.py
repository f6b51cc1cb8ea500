"""The pixel budget: what a request weighs, and how a batch is run under it (no Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from stylefleet.deployments.batching import ModelRequest, infer_prepared, prepare_one, request_pixels, validate_params
from stylefleet.deployments.kinds import KINDS
from stylefleet.deployments.memory import arena_release_requested
from stylefleet.errors import InvalidImage, InvalidParams
from tests import samples


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_side: int = 100


@dataclass
class _Prepared:
    key: str
    name: str


class RecordingModel:
    """Runs nothing; records each network call's members and whether the arena was to be released."""

    params_model = _Params

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def decode_side(self, params: dict[str, Any]) -> int:
        return int(validate_params(_Params, params).max_side)

    def prepare(self, request: ModelRequest) -> _Prepared:
        return _Prepared("all", request.params["name"])

    def infer(self, group: Sequence[_Prepared]) -> list[str]:
        self.calls.append(([p.name for p in group], arena_release_requested()))
        return [p.name for p in group]

    def finish(self, prepared: _Prepared, raw: str) -> np.ndarray:
        return np.zeros((1, 1, 3), np.uint8)


def _named(*names: str) -> list[ModelRequest]:
    return [ModelRequest({}, {"name": n}) for n in names]


def run_under_budget(model: RecordingModel, requests: list[ModelRequest], pixels: list[int], budget: int | None) -> list:
    """What a replica does: each request prepared on arrival, the batch run under the budget."""
    return infer_prepared(model, [prepare_one(model, r) for r in requests], pixels, budget)


def test_batch_is_split_into_chunks_under_the_budget() -> None:
    model = RecordingModel()
    outcomes = run_under_budget(model, _named("a", "b", "c", "d"), [40, 40, 40, 10], budget=100)
    assert model.calls == [(["a", "b"], False), (["c", "d"], False)]
    assert len(outcomes) == 4


def test_an_image_over_the_budget_runs_alone_and_releases_the_arena() -> None:
    model = RecordingModel()
    run_under_budget(model, _named("small", "huge", "small2"), [10, 500, 10], budget=100)
    assert model.calls == [(["small"], False), (["huge"], True), (["small2"], False)]
    assert not arena_release_requested(), "the release applies to that call only"


def test_no_budget_means_one_call() -> None:
    model = RecordingModel()
    run_under_budget(model, _named("a", "b"), [10**9, 10**9], budget=None)
    assert model.calls == [(["a", "b"], False)]


def test_a_request_weighs_its_pixels_after_max_side_read_from_the_header() -> None:
    model = RecordingModel()
    jpeg = samples.encoded(samples.cat(), "JPEG")  # 451 x 300
    assert request_pixels(model, ModelRequest({}, {"max_side": 1000}, files={"image": jpeg})) == 451 * 300
    assert request_pixels(model, ModelRequest({}, {"max_side": 100}, files={"image": jpeg})) == 100 * 67
    assert request_pixels(model, ModelRequest({"image": samples.cat()}, {"max_side": 100})) == 100 * 67


def test_weighing_refuses_a_bad_file_or_param_before_it_queues() -> None:
    model = RecordingModel()
    with pytest.raises(InvalidImage):
        request_pixels(model, ModelRequest({}, {}, files={"image": b"not an image"}))
    with pytest.raises(InvalidParams):
        request_pixels(model, ModelRequest({}, {"max_side": "big"}, files={"image": samples.encoded(samples.cat())}))


@pytest.mark.parametrize("kind", ["multistyle26", "arbitrary", "u2netp", "haar-face", "id-photo"])
def test_every_image_model_has_a_pixel_budget_of_at_least_one_full_batch_of_512px(kind: str) -> None:
    budget = KINDS[kind].max_batch_pixels
    assert budget is not None and budget >= 8 * 512 * 512
