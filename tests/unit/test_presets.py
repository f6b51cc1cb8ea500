"""ID-photo presets as data: the authorities' figures, the shares derived from them, their sources."""

from __future__ import annotations

import pytest

from stylefleet.deployments.presets import EYE_BELOW_CROWN, MM_PER_INCH, PRESETS, derive_shares, frame_for

WITH_HEAD_RULE = [name for name, p in PRESETS.items() if p.head is not None]


def test_at_least_15_presets_across_at_least_10_countries() -> None:
    countries = {p.country for p in PRESETS.values()} - {"ICAO", "EU"}
    assert len(PRESETS) >= 15 and len(countries) >= 10


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_names_its_source_document_and_background(name: str) -> None:
    p = PRESETS[name]
    assert p.source and p.standard and p.document and p.background
    assert "http" in p.source or "ICAO Doc 9303" in p.source or p.rule_from is not None
    assert p.head is not None or p.rule_from in PRESETS  # a borrowed rule names a real preset


@pytest.mark.parametrize("name", WITH_HEAD_RULE)
def test_the_derived_shares_give_back_the_authoritys_lengths(name: str) -> None:
    p = PRESETS[name]
    assert p.head is not None
    assert (p.head_share[0] * p.height, p.head_share[1] * p.height) == pytest.approx(p.head)
    if p.top is not None:
        assert (p.top_share[0] * p.height, p.top_share[1] * p.height) == pytest.approx(p.top)
    if p.eyes_from_bottom is not None:
        assert p.eye_share is not None
        low, high = p.eyes_from_bottom
        assert ((1 - p.eye_share[1]) * p.height, (1 - p.eye_share[0]) * p.height) == pytest.approx((low, high))


@pytest.mark.parametrize("name", WITH_HEAD_RULE)
def test_the_frame_at_300_dpi_puts_the_head_inside_the_stated_millimetres(name: str) -> None:
    p = PRESETS[name]
    assert p.head is not None
    frame = frame_for(name, 300)
    mm_per_px = MM_PER_INCH / 300
    scale = MM_PER_INCH if p.unit == "in" else 1.0
    assert (frame.width_px, frame.height_px) == (round(p.width * scale / mm_per_px), round(p.height * scale / mm_per_px))
    head_mm = frame.head_px * mm_per_px
    assert p.head[0] * scale <= head_mm <= p.head[1] * scale
    top_mm = frame.top_px * mm_per_px
    assert 0 < top_mm < p.height * scale - head_mm  # the chin stays inside the photo


@pytest.mark.parametrize("name", ["us-passport", "us-visa"])
def test_the_us_eye_band_holds_at_the_middle_of_the_ranges(name: str) -> None:
    """1 1/8 to 1 3/8 in from the bottom, with the head 1 to 1 3/8 in."""
    frame = frame_for(name, 300)
    eyes_from_bottom_in = (frame.height_px - frame.top_px - EYE_BELOW_CROWN * frame.head_px) / 300
    assert 1.125 <= eyes_from_bottom_in <= 1.375
    assert 1.0 <= frame.head_px / 300 <= 1.375


@pytest.mark.parametrize(
    ("name", "unit", "size", "head"),
    [
        ("us-passport", "in", (2, 2), (1, 1.375)),
        ("uk-passport", "mm", (35, 45), (29, 34)),
        ("canada-passport", "mm", (50, 70), (31, 36)),
        ("passport", "mm", (35, 45), (32, 36)),
        ("small-2-inch", "mm", (33, 48), (28, 33)),
        ("hong-kong-passport", "mm", (40, 50), (32, 36)),
        ("japan-passport", "mm", (35, 45), (32, 36)),
    ],
)
def test_figures_as_the_authorities_write_them(name: str, unit: str, size: tuple[float, float], head: tuple[float, float]) -> None:
    p = PRESETS[name]
    assert (p.unit, (p.width, p.height), p.head) == (unit, size, head)


def test_where_no_top_margin_is_given_it_is_3_to_5_mm() -> None:
    head, top, eyes = derive_shares(45, (32, 36), None, None, "mm")
    assert top == pytest.approx((3 / 45, 5 / 45)) and eyes is None


def test_the_studio_sizes_borrow_the_exit_entry_rule() -> None:
    for name in ("1-inch", "2-inch"):
        p = PRESETS[name]
        assert p.rule_from == "small-2-inch" and p.head is None
        assert (p.head_share, p.top_share) == (PRESETS["small-2-inch"].head_share, PRESETS["small-2-inch"].top_share)
