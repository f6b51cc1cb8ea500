"""The real networks, in-process: sizes, modes, batch invariance, per-item isolation."""

from __future__ import annotations

import numpy as np
import pytest

from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, run_batch
from stylefleet.deployments.registry import resolve
from stylefleet.deployments.restyle import ArbitraryStyleModel
from stylefleet.deployments.stylize import MultiStyleModel
from stylefleet.errors import InvalidImage, InvalidParams, StylefleetError
from tests import samples


@pytest.fixture(scope="module")
def multistyle(runtime) -> MultiStyleModel:
    return MultiStyleModel(resolve("multistyle26"), runtime)


@pytest.fixture(scope="module")
def arbitrary(runtime) -> ArbitraryStyleModel:
    return ArbitraryStyleModel(resolve("arbitrary_predict"), resolve("arbitrary_transform"), runtime)


@pytest.fixture(scope="module")
def u2net(runtime) -> U2NetModel:
    return U2NetModel(resolve("u2netp"), runtime)


def _one(model, request: ModelRequest) -> np.ndarray:
    [out] = run_batch(model, [request])
    assert not isinstance(out, StylefleetError), out
    return out


def test_stylize_changes_the_photo_and_keeps_its_size(multistyle) -> None:
    out = _one(multistyle, ModelRequest({"image": samples.cat()}, {"style": "19"}))
    assert out.shape == samples.cat().shape
    assert np.abs(out.astype(int) - samples.cat()).mean() > 20


def test_stylize_caps_the_longer_side(multistyle) -> None:
    out = _one(multistyle, ModelRequest({"image": samples.coffee()}, {"style": "3", "max_side": 300}))
    assert out.shape == (200, 300, 3)


def test_stylize_strength_zero_is_the_original(multistyle) -> None:
    out = _one(multistyle, ModelRequest({"image": samples.cat()}, {"style": "5", "strength": 0.0}))
    assert np.array_equal(out, samples.cat())


def test_stylize_keeps_alpha(multistyle) -> None:
    rgba = np.dstack([samples.cat(), np.full(samples.cat().shape[:2], 255, np.uint8)])
    rgba[:50, :, 3] = 0
    out = _one(multistyle, ModelRequest({"image": rgba}, {"style": "1"}))
    assert out.shape[2] == 4 and out[:50, :, 3].max() == 0 and out[60:, :, 3].min() == 255


def test_stylize_groups_by_style_and_size(multistyle) -> None:
    calls: list[int] = []
    original = multistyle.infer
    requests = [
        ModelRequest({"image": samples.cat()}, {"style": "1"}),
        ModelRequest({"image": samples.cat()}, {"style": "2"}),
        ModelRequest({"image": samples.cat()}, {"style": "1"}),
        ModelRequest({"image": samples.astronaut()}, {"style": "1"}),
    ]
    try:
        multistyle.infer = lambda group: calls.append(len(group)) or original(group)
        run_batch(multistyle, requests)
    finally:
        del multistyle.infer
    assert sorted(calls) == [1, 1, 2]


def test_restyle_uses_the_style_image(arbitrary) -> None:
    a = _one(arbitrary, ModelRequest({"image": samples.astronaut(), "style_image": samples.cat()}))
    b = _one(arbitrary, ModelRequest({"image": samples.astronaut(), "style_image": samples.coffee()}))
    assert a.shape == samples.astronaut().shape
    assert np.abs(a.astype(int) - b).mean() > 5


def test_restyle_needs_a_style_image(arbitrary) -> None:
    [out] = run_batch(arbitrary, [ModelRequest({"image": samples.astronaut()})])
    assert isinstance(out, InvalidParams) and "style_image" in out.message


def test_background_removal_clears_corners_and_keeps_the_face(u2net) -> None:
    out = _one(u2net, ModelRequest({"image": samples.astronaut()}))
    assert out.shape == (512, 512, 4)
    assert out[0, 0, 3] < 16 and out[0, -1, 3] < 16  # the top corners are backdrop
    assert out[80:150, 190:260, 3].min() > 240  # the face (Haar box x177 y66 95x95) is opaque
    assert np.array_equal(out[:, :, :3], samples.astronaut())  # straight alpha: colours untouched


def test_background_removal_flattens_onto_bg_color(u2net) -> None:
    out = _one(u2net, ModelRequest({"image": samples.astronaut()}, {"bg_color": "#0000ff"}))
    assert out.shape == (512, 512, 3)
    assert tuple(out[2, 2]) == (0, 0, 255) or out[2, 2, 2] > 240


def _mixed_batch(target: ModelRequest, filler: list[ModelRequest]) -> list[ModelRequest]:
    return filler[:3] + [target] + filler[3:7]


@pytest.mark.parametrize("which", ["multistyle", "arbitrary", "u2net"])
def test_same_bytes_alone_and_in_a_batch_of_8(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    images = {"image": samples.astronaut()}
    if which == "arbitrary":
        images["style_image"] = samples.cat()
    params = {"style": "7"} if which == "multistyle" else {}
    target = ModelRequest(images, params, OutputSpec("png"))
    filler_images = (
        {"image": samples.astronaut()[::-1].copy(), "style_image": samples.coffee()}
        if which == "arbitrary"
        else {"image": samples.astronaut()[:, ::-1].copy()}
    )
    filler = [ModelRequest(dict(filler_images), dict(params), OutputSpec("png")) for _ in range(7)]
    batch = _mixed_batch(target, filler)
    alone = encode_outcomes([target], run_batch(model, [target]), "x")[0]
    together = encode_outcomes(batch, run_batch(model, batch), "x")[3]
    assert alone.data == together.data  # type: ignore[union-attr]


def test_one_bad_item_fails_alone(multistyle) -> None:
    good = ModelRequest({"image": samples.cat()}, {"style": "4"})
    tiny = ModelRequest({"image": np.zeros((8, 8, 3), np.uint8)}, {"style": "4"})
    bad_param = ModelRequest({"image": samples.cat()}, {"style": "4", "strength": 3})
    out = run_batch(multistyle, [good, tiny, bad_param, good])
    assert isinstance(out[1], InvalidImage)
    assert isinstance(out[2], InvalidParams) and "strength" in out[2].message
    assert np.array_equal(out[0], out[3]) and out[0].shape == samples.cat().shape


def test_a_network_failure_is_isolated_by_retrying_one_by_one(multistyle) -> None:
    poisoned = np.zeros((300, 451, 3), np.uint8)
    original = multistyle.infer

    def infer(group):
        if any(float(p.original.mean()) == 0.0 for p in group):
            raise RuntimeError("simulated kernel failure on one input")
        return original(group)

    requests = [ModelRequest({"image": samples.cat()}, {"style": "4"}), ModelRequest({"image": poisoned}, {"style": "4"})]
    try:
        multistyle.infer = infer
        out = run_batch(multistyle, requests)
    finally:
        del multistyle.infer
    assert isinstance(out[0], np.ndarray)
    assert isinstance(out[1], StylefleetError) and out[1].status == 500
