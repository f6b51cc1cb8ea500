"""ID-photo size presets, as data: size in mm, pixels at a dpi, and where the head goes. Pure.

Head rules are shares of the photo's height, so they hold at any dpi:

- ``head_share``: chin to crown (top of the hair), over the photo height, as (min, max);
- ``top_share``: crown to the photo's top edge, over the photo height, as (min, max).

The photo is made at the middle of both ranges. Where a standard gives millimetres, the shares are
those millimetres over the height; where it gives none (the Chinese studio sizes), the preset says
which rule it borrows. docs/id-photos.md ("ID photos") prints this table with its sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MM_PER_INCH = 25.4

PresetName = Literal["1-inch", "small-2-inch", "2-inch", "passport", "us-passport"]
SizeName = Literal["1-inch", "small-2-inch", "2-inch", "passport", "us-passport", "custom"]


@dataclass(frozen=True)
class SizePreset:
    name: str
    width_mm: float
    height_mm: float
    head_share: tuple[float, float]
    top_share: tuple[float, float]
    standard: str
    source: str

    def pixels(self, dpi: int) -> tuple[int, int]:
        return mm_to_px(self.width_mm, dpi), mm_to_px(self.height_mm, dpi)


def mm_to_px(mm: float, dpi: int) -> int:
    return round(mm / MM_PER_INCH * dpi)


# China's exit-entry photo rule (33x48 mm: head 28-33 mm, crown 3-5 mm below the top edge).
_CN_HEAD = (28 / 48, 33 / 48)
_CN_TOP = (3 / 48, 5 / 48)
_CN_SOURCE = (
    "National Immigration Administration of China, 出入境证件相片照相指引 (exit-entry document photo "
    "guideline); the same figures are on Chinese visa application photo requirements"
)
# ICAO 9303 / Schengen (35x45 mm: head 32-36 mm, i.e. 70-80 % of the height).
_ICAO_HEAD = (32 / 45, 36 / 45)
_ICAO_TOP = (3 / 45, 5 / 45)

PRESETS: dict[str, SizePreset] = {
    p.name: p
    for p in (
        SizePreset(
            name="1-inch",
            width_mm=25,
            height_mm=35,
            head_share=_CN_HEAD,
            top_share=_CN_TOP,
            standard="Chinese studio 1-inch (一寸, 295x413 px at 300 dpi); no national head rule, so the "
            "exit-entry proportions (small-2-inch) are applied",
            source=_CN_SOURCE,
        ),
        SizePreset(
            name="small-2-inch",
            width_mm=33,
            height_mm=48,
            head_share=_CN_HEAD,
            top_share=_CN_TOP,
            standard="China passport / exit-entry permit / China visa (小二寸): head 28-33 mm, crown 3-5 mm "
            "from the top edge",
            source=_CN_SOURCE,
        ),
        SizePreset(
            name="2-inch",
            width_mm=35,
            height_mm=49,
            head_share=_CN_HEAD,
            top_share=_CN_TOP,
            standard="Chinese studio 2-inch (二寸, 413x579 px at 300 dpi); no national head rule, so the "
            "exit-entry proportions (small-2-inch) are applied",
            source=_CN_SOURCE,
        ),
        SizePreset(
            name="passport",
            width_mm=35,
            height_mm=45,
            head_share=_ICAO_HEAD,
            top_share=_ICAO_TOP,
            standard="ICAO Doc 9303 passport/visa photo, as the Schengen visa and most EU passports take it: "
            "35x45 mm, chin to crown 32-36 mm (70-80 %); the standard gives no top margin, crown 3-5 mm "
            "from the top is stylefleet's choice",
            source="ICAO Doc 9303 Part 3 and ISO/IEC 19794-5 (portrait); EU visa code photo guidelines (Schengen)",
        ),
        SizePreset(
            name="us-passport",
            width_mm=2 * MM_PER_INCH,
            height_mm=2 * MM_PER_INCH,
            head_share=(1 / 2, 1.375 / 2),
            top_share=(0.05, 0.14),
            standard="US passport and visa: 2x2 in (600x600 px at 300 dpi), chin to top of head 1 to 1 3/8 in "
            "(50-69 %), eyes 1 1/8 to 1 3/8 in from the bottom; the top margin is derived from that eye band",
            source="US Department of State, travel.state.gov: passport photo requirements and photo composition template",
        ),
    )
}

# `custom` sizes take the ICAO proportions, the most widely used rule.
CUSTOM_HEAD_SHARE = _ICAO_HEAD
CUSTOM_TOP_SHARE = _ICAO_TOP
CUSTOM_SOURCE = "custom size: ICAO 9303 proportions (head 70-80 %, crown 3-5 mm of 45 from the top)"


@dataclass(frozen=True)
class Frame:
    """The photo to make: exact pixels, the dpi written in its metadata, and the head rule."""

    width_px: int
    height_px: int
    dpi: int
    head_share: tuple[float, float]
    top_share: tuple[float, float]

    @property
    def head_px(self) -> float:
        return self.height_px * sum(self.head_share) / 2

    @property
    def top_px(self) -> float:
        return self.height_px * sum(self.top_share) / 2


def frame_for(
    size: str,
    dpi: int,
    *,
    width_mm: float | None = None,
    height_mm: float | None = None,
    width_px: int | None = None,
    height_px: int | None = None,
) -> Frame:
    """A preset at ``dpi``, or a custom size (mm converted at ``dpi``, or pixels as given)."""
    if size != "custom":
        preset = PRESETS[size]
        w, h = preset.pixels(dpi)
        return Frame(w, h, dpi, preset.head_share, preset.top_share)
    if width_px is not None and height_px is not None:
        w, h = width_px, height_px
    elif width_mm is not None and height_mm is not None:
        w, h = mm_to_px(width_mm, dpi), mm_to_px(height_mm, dpi)
    else:
        raise ValueError("size=custom needs width_mm and height_mm, or width_px and height_px")
    return Frame(w, h, dpi, CUSTOM_HEAD_SHARE, CUSTOM_TOP_SHARE)
