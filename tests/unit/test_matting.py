"""Edge controls of remove-background on a real photo: what alpha matting may change, and what not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stylefleet.deployments import background
from stylefleet.deployments.background import MATTING_MAX_SIDE, TRIMAP_BAND_PX, EdgeParams, U2NetModel, alpha_matte, refine_edges
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.registry import resolve
from stylefleet.errors import StylefleetError
from tests import samples


@pytest.fixture(scope="module")
def u2net(runtime) -> U2NetModel:
    return U2NetModel(resolve("u2netp"), runtime)


def _alpha(model: U2NetModel, params: dict[str, object]) -> np.ndarray:
    [out] = run_batch(model, [ModelRequest({"image": samples.astronaut()}, params)])
    assert not isinstance(out, StylefleetError), out
    return out[:, :, 3]


@pytest.fixture(scope="module")
def plain(u2net) -> np.ndarray:
    return _alpha(u2net, {})


@pytest.fixture(scope="module")
def refined(u2net) -> np.ndarray:
    return _alpha(u2net, {"alpha_matting": True})


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _band(plain: np.ndarray) -> np.ndarray:
    """The trimap's unknown band: the soft edge of the matte widened by the trimap erosion."""
    soft = ((plain >= background.TRIMAP_BACKGROUND) & (plain <= background.TRIMAP_FOREGROUND)).astype(np.uint8)
    return cv2.dilate(soft, _disc(TRIMAP_BAND_PX + 1)).astype(bool)


def test_matting_changes_the_edge_band(plain, refined) -> None:
    band = _band(plain)
    assert np.abs(refined[band].astype(int) - plain[band]).mean() > 5  # the solver did move the edge


def test_matting_changes_nothing_outside_the_band_but_clean_ups(plain, refined) -> None:
    changed = (refined != plain) & ~_band(plain)
    # outside the band only near-certain values are made certain: >240 to 255, <10 to 0
    assert np.all((plain[changed] > 240) & (refined[changed] == 255) | (plain[changed] < 10) & (refined[changed] == 0))


def test_matting_keeps_the_inside_opaque(plain, refined) -> None:
    inside = cv2.erode((plain > 240).astype(np.uint8), _disc(2 * TRIMAP_BAND_PX)).astype(bool)
    assert inside.sum() > 40_000  # the astronaut's head and suit
    assert refined[inside].min() == 255


def test_matting_keeps_the_far_background_transparent(plain, refined) -> None:
    far = cv2.erode((plain < 10).astype(np.uint8), _disc(2 * TRIMAP_BAND_PX)).astype(bool)
    assert far.sum() > 20_000
    assert refined[far].max() == 0


def test_default_edges_leave_the_matte_as_it_was(plain) -> None:
    assert refine_edges(samples.astronaut(), plain, EdgeParams()) is plain


def test_threshold_makes_a_hard_edge(plain) -> None:
    hard = refine_edges(samples.astronaut(), plain, EdgeParams(threshold=128))
    assert set(np.unique(hard)) == {0, 255}
    assert np.array_equal(hard == 255, plain >= 128)


def test_erode_shrinks_the_subject(plain) -> None:
    hard = refine_edges(samples.astronaut(), plain, EdgeParams(threshold=128))
    eroded = refine_edges(samples.astronaut(), plain, EdgeParams(threshold=128, erode_px=3))
    assert (eroded == 255).sum() < (hard == 255).sum()
    assert not np.any((eroded == 255) & (hard == 0))  # nothing grows


def test_feather_softens_only_near_the_edge(plain) -> None:
    hard = refine_edges(samples.astronaut(), plain, EdgeParams(threshold=128))
    soft = refine_edges(samples.astronaut(), plain, EdgeParams(threshold=128, feather_px=2))
    partial = (soft > 0) & (soft < 255)
    assert partial.sum() > (((hard > 0) & (hard < 255)).sum())
    edge = cv2.morphologyEx(hard, cv2.MORPH_GRADIENT, _disc(1)) > 0
    assert not np.any(partial & ~cv2.dilate(edge.astype(np.uint8), _disc(8)).astype(bool))  # 4 sigma


def test_matting_solves_a_large_image_at_the_capped_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import pymatting

    seen: list[tuple[int, int]] = []

    def fake(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        seen.append(trimap.shape)
        return trimap

    monkeypatch.setattr(pymatting, "estimate_alpha_cf", fake)
    alpha = np.zeros((3000, 4000), np.uint8)
    cv2.circle(alpha, (2000, 1500), 1200, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 8)
    out = alpha_matte(np.zeros((3000, 4000, 3), np.uint8), alpha)
    assert out.shape == alpha.shape
    assert seen and max(seen[0]) <= MATTING_MAX_SIDE


def test_matting_solves_only_the_band_box(monkeypatch: pytest.MonkeyPatch) -> None:
    import pymatting

    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(pymatting, "estimate_alpha_cf", lambda image, trimap: seen.append(trimap.shape) or trimap)
    alpha = np.zeros((400, 400), np.uint8)
    alpha[100:150, 100:150] = 255
    alpha_matte(np.zeros((400, 400, 3), np.uint8), cv2.GaussianBlur(alpha, (0, 0), 2))
    assert seen and max(seen[0]) < 120  # the 50 px square's band, not the 400 px image
