"""Matte metrics on hand-made mattes whose figures are worked out by hand.

A vertical step from 0 to 255 at column 10 of a 20-column matte: Sobel (ksize 3) gives 4 (alpha
units) at columns 9 and 10 and 0 elsewhere, so the reference's edge band is columns 7-12 (the two
edge columns dilated by 5x5), six columns over every row.
"""

from __future__ import annotations

import numpy as np
import pytest

from stylefleet.compare import matte_drift

H, W = 12, 20


def _step(column: int) -> np.ndarray:
    matte = np.zeros((H, W), np.uint8)
    matte[:, column:] = 255
    return matte


def test_identical_mattes() -> None:
    d = matte_drift(_step(10), _step(10))
    assert (d.iou, d.mean_abs_alpha_diff, d.edge_error) == (1.0, 0.0, 0.0)


def test_an_edge_shifted_by_one_pixel() -> None:
    d = matte_drift(_step(10), _step(11))
    assert d.iou == pytest.approx(9 / 10)  # 9 of 10 subject columns shared
    assert d.mean_abs_alpha_diff == pytest.approx(1 / 20)  # one column of 20 differs by 1
    assert d.edge_error == pytest.approx(8 / 6)  # |4| at columns 9 and 11, over the 6-column band


def test_a_blurred_edge() -> None:
    blurred = _step(10)
    blurred[:, 9], blurred[:, 10] = 51, 204  # 0.2 and 0.8: the same side of 0.5 as before
    d = matte_drift(_step(10), blurred)
    assert d.iou == 1.0
    assert d.mean_abs_alpha_diff == pytest.approx(0.4 / 20, rel=1e-5)
    # gradients 0.8, 3.2, 3.2, 0.8 at columns 8-11 against 0, 4, 4, 0: 4 x 0.8 over 6 columns
    assert d.edge_error == pytest.approx(3.2 / 6, rel=1e-5)


def test_empty_mattes_agree_fully() -> None:
    empty = np.zeros((H, W), np.uint8)
    d = matte_drift(empty, empty)
    assert (d.iou, d.mean_abs_alpha_diff, d.edge_error) == (1.0, 0.0, 0.0)


def test_a_lost_subject_has_no_overlap() -> None:
    d = matte_drift(_step(10), np.zeros((H, W), np.uint8))
    assert d.iou == 0.0 and d.mean_abs_alpha_diff == pytest.approx(0.5)
    assert d.edge_error == pytest.approx(8 / 6)  # the reference's 4 at columns 9 and 10, lost


def test_a_candidate_of_another_size_is_resized_to_the_reference() -> None:
    big = np.zeros((2 * H, 2 * W), np.uint8)
    big[:, 20:] = 255  # the same step at twice the size
    d = matte_drift(_step(10), big)
    assert (d.iou, d.mean_abs_alpha_diff, d.edge_error) == (1.0, 0.0, 0.0)
