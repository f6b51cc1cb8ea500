"""ID-photo size presets, as data: each document's figures as its authority writes them. Pure.

A preset keeps the authority's own numbers in its own unit (millimetres, or inches for the US):
photo size, head height (chin to crown, the top of the hair), the crown's margin from the top
edge and the eye line's band where the authority gives them, the background it asks for, and
where those figures come from. The geometry works in shares of the photo's height, derived here
from those numbers, so they hold at any dpi:

- ``head_share``: chin to crown over the photo height, as (min, max);
- ``top_share``: crown to the photo's top edge over the photo height, as (min, max);
- ``eye_share``: the eye line's distance from the top edge over the photo height, where the
  authority gives an eye band (else ``None``).

Where the authority gives no top margin, it comes from its eye band (the eyes lie
``EYE_BELOW_CROWN`` of the head height below the crown), else it is stylefleet's
``DEFAULT_TOP_MM``. Where it gives no head rule at all (the Chinese studio sizes), the preset
borrows another preset's shares and says so. The photo is made at the middle of both ranges.
docs/id-photos.md ("ID photos") prints this table with its sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MM_PER_INCH = 25.4

# Eyes lie about 45 % of the chin-to-crown height below the crown (adult heads with hair); only
# used to turn an eye band into a top margin where the authority gives no top margin.
EYE_BELOW_CROWN = 0.45
# Where the authority gives no top margin and no eye band: crown 3-5 mm below the top edge
# (stylefleet's choice; it leaves room for the hair without shrinking the head).
DEFAULT_TOP_MM = (3.0, 5.0)

PresetName = Literal[
    "1-inch",
    "small-2-inch",
    "2-inch",
    "passport",
    "us-passport",
    "us-visa",
    "schengen-visa",
    "uk-passport",
    "canada-passport",
    "canada-visa",
    "australia-passport",
    "india-passport",
    "china-visa",
    "japan-passport",
    "germany-passport",
    "france-passport",
    "korea-passport",
    "hong-kong-passport",
]
SizeName = Literal[PresetName, "custom"]  # a preset, or width and height given in the request
Unit = Literal["mm", "in"]
Range = tuple[float, float]


@dataclass(frozen=True)
class SizePreset:
    """One document's photo rule. Lengths (``width``, ``height``, ``head``, ``top``,
    ``eyes_from_bottom``) are in ``unit``, as the authority writes them."""

    name: str
    country: str  # ISO 3166-1 alpha-2 (HK for Hong Kong), or EU / ICAO for shared rules
    document: str
    unit: Unit
    width: float
    height: float
    head: Range | None  # chin to crown; None: borrowed from ``rule_from``
    top: Range | None  # crown to the top edge, where the authority gives it
    eyes_from_bottom: Range | None  # the eye line's distance from the bottom edge, where given
    background: str
    standard: str
    source: str
    head_share: Range
    top_share: Range
    eye_share: Range | None
    rule_from: str | None = None

    @property
    def width_mm(self) -> float:
        return to_mm(self.width, self.unit)

    @property
    def height_mm(self) -> float:
        return to_mm(self.height, self.unit)

    def pixels(self, dpi: int) -> tuple[int, int]:
        return mm_to_px(self.width_mm, dpi), mm_to_px(self.height_mm, dpi)


def to_mm(length: float, unit: Unit) -> float:
    return length * MM_PER_INCH if unit == "in" else length


def mm_to_px(mm: float, dpi: int) -> int:
    return round(mm / MM_PER_INCH * dpi)


def derive_shares(
    height: float, head: Range, top: Range | None, eyes_from_bottom: Range | None, unit: Unit
) -> tuple[Range, Range, Range | None]:
    """(head_share, top_share, eye_share) from the authority's lengths, all in one unit."""
    head_share = (head[0] / height, head[1] / height)
    eye_share = None if eyes_from_bottom is None else ((height - eyes_from_bottom[1]) / height, (height - eyes_from_bottom[0]) / height)
    if top is not None:
        top_share = (top[0] / height, top[1] / height)
    elif eye_share is not None:
        crown_to_eyes = EYE_BELOW_CROWN * sum(head_share) / 2
        top_share = (eye_share[0] - crown_to_eyes, eye_share[1] - crown_to_eyes)
    else:
        height_mm = to_mm(height, unit)
        top_share = (DEFAULT_TOP_MM[0] / height_mm, DEFAULT_TOP_MM[1] / height_mm)
    return head_share, top_share, eye_share


def _preset(
    name: str,
    country: str,
    document: str,
    size: tuple[float, float],
    *,
    head: Range | None,
    background: str,
    standard: str,
    source: str,
    unit: Unit = "mm",
    top: Range | None = None,
    eyes_from_bottom: Range | None = None,
    rule_from: SizePreset | None = None,
) -> SizePreset:
    width, height = size
    if head is not None:
        head_share, top_share, eye_share = derive_shares(height, head, top, eyes_from_bottom, unit)
    elif rule_from is not None:
        head_share, top_share, eye_share = rule_from.head_share, rule_from.top_share, rule_from.eye_share
    else:
        raise ValueError(f"{name}: a preset needs a head rule or a preset to borrow one from")
    return SizePreset(
        name=name, country=country, document=document, unit=unit, width=width, height=height, head=head, top=top,
        eyes_from_bottom=eyes_from_bottom, background=background, standard=standard, source=source,
        head_share=head_share, top_share=top_share, eye_share=eye_share, rule_from=None if rule_from is None else rule_from.name,
    )


_CN_SOURCE = (
    "National Immigration Administration of China, 出入境证件相片照相指引 (exit-entry document photo guideline), "
    "https://www.nia.gov.cn; the same figures are on the Chinese visa application photo requirements"
)
_ICAO_SOURCE = "ICAO Doc 9303 Part 3 (Machine Readable Travel Documents) and ISO/IEC 19794-5 (face image data)"
_US_PASSPORT_SOURCE = (
    "US Department of State, Passport Photos, https://travel.state.gov/content/travel/en/passports/how-apply/photos.html, "
    "and its photo composition template"
)

_SMALL_2_INCH = _preset(
    "small-2-inch", "CN", "China passport, exit-entry permits, China visa (小二寸)", (33, 48),
    head=(28, 33), top=(3, 5),
    background="white (passport); white or light blue on some permits",
    standard="head 28-33 mm, crown 3-5 mm from the top edge",
    source=_CN_SOURCE,
)
_ICAO = _preset(
    "passport", "ICAO", "ICAO passport/visa photo, as most passports and the Schengen visa take it", (35, 45),
    head=(32, 36),
    background="plain, uniform and light-coloured",
    standard="chin to crown 32-36 mm (70-80 %); the standard gives no top margin, crown 3-5 mm from the top is "
    "stylefleet's choice",
    source=_ICAO_SOURCE + "; EU Visa Code (Regulation (EC) No 810/2009) photo guidelines",
)

PRESETS: dict[str, SizePreset] = {
    p.name: p
    for p in (
        _preset(
            "1-inch", "CN", "Chinese studio 1-inch (一寸)", (25, 35),
            head=None, rule_from=_SMALL_2_INCH,
            background="white, blue or red, as the form asks",
            standard="295x413 px at 300 dpi; no national head rule, so the exit-entry proportions (small-2-inch) apply",
            source="studio size; head rule as small-2-inch: " + _CN_SOURCE,
        ),
        _SMALL_2_INCH,
        _preset(
            "2-inch", "CN", "Chinese studio 2-inch (二寸)", (35, 49),
            head=None, rule_from=_SMALL_2_INCH,
            background="white, blue or red, as the form asks",
            standard="413x579 px at 300 dpi; no national head rule, so the exit-entry proportions (small-2-inch) apply",
            source="studio size; head rule as small-2-inch: " + _CN_SOURCE,
        ),
        _ICAO,
        _preset(
            "us-passport", "US", "US passport", (2, 2), unit="in",
            head=(1, 1.375), eyes_from_bottom=(1.125, 1.375),
            background="plain white or off-white",
            standard="2x2 in (600x600 px at 300 dpi), chin to top of head 1 to 1 3/8 in, eyes 1 1/8 to 1 3/8 in from "
            "the bottom; the top margin is derived from that eye band",
            source=_US_PASSPORT_SOURCE,
        ),
        _preset(
            "us-visa", "US", "US visa (DS-160 and printed)", (2, 2), unit="in",
            head=(1, 1.375), eyes_from_bottom=(1.125, 1.375),
            background="plain white or off-white",
            standard="as the US passport: 2x2 in, head 1 to 1 3/8 in (50-69 %), eyes 1 1/8 to 1 3/8 in from the bottom; "
            "a digital upload is 600x600 to 1200x1200 px",
            source="US Department of State, Photo Requirements (visas), "
            "https://travel.state.gov/content/travel/en/us-visas/visa-information-resources/photos.html",
        ),
        _preset(
            "schengen-visa", "EU", "Schengen visa", (35, 45),
            head=(32, 36),
            background="plain, uniform and light-coloured",
            standard="ICAO 9303 figures: chin to crown 32-36 mm (70-80 % of the height)",
            source="EU Visa Code, Regulation (EC) No 810/2009, Art. 13 and its ICAO-based photo guidelines; " + _ICAO_SOURCE,
        ),
        _preset(
            "uk-passport", "GB", "UK passport", (35, 45),
            head=(29, 34),
            background="plain cream or light grey",
            standard="45 mm high by 35 mm wide, crown of the head to the chin 29-34 mm",
            source="HM Passport Office, Photos for passports, https://www.gov.uk/photos-for-passports",
        ),
        _preset(
            "canada-passport", "CA", "Canadian passport", (50, 70),
            head=(31, 36),
            background="plain white or light-coloured, with a clear difference from the face",
            standard="50 mm wide x 70 mm high, chin to crown (natural top of head) 31-36 mm",
            source="Immigration, Refugees and Citizenship Canada, Passport photos, "
            "https://www.canada.ca/en/immigration-refugees-citizenship/services/canadian-passports/photos.html",
        ),
        _preset(
            "canada-visa", "CA", "Canadian visa and permits (temporary residence)", (35, 45),
            head=(31, 36),
            background="plain white or light-coloured",
            standard="at least 35 mm x 45 mm, chin to crown 31-36 mm",
            source="Immigration, Refugees and Citizenship Canada, Visa application photo specifications (IMM 5257 B), "
            "https://www.canada.ca/en/immigration-refugees-citizenship/services/application/application-forms-guides/"
            "temporary-resident-visa-application-photograph-specifications.html",
        ),
        _preset(
            "australia-passport", "AU", "Australian passport", (35, 45),
            head=(32, 36),
            background="plain white or light grey",
            standard="35-40 mm wide, 45-50 mm high; chin to crown 32-36 mm",
            source="Australian Passport Office, Photo guidelines, https://www.passports.gov.au/getting-passport-how-it-works/photo-guidelines",
        ),
        _preset(
            "india-passport", "IN", "Indian passport", (35, 45),
            head=(32, 36),
            background="plain white",
            standard="4.5 cm x 3.5 cm, white background, full face; the head rule is ICAO's (70-80 %), which the "
            "Indian missions abroad apply",
            source="Ministry of External Affairs, Passport Seva, Instruction booklet and photograph specifications, "
            "https://www.passportindia.gov.in; " + _ICAO_SOURCE,
        ),
        _preset(
            "china-visa", "CN", "Chinese visa", (33, 48),
            head=(28, 33), top=(3, 5),
            background="white",
            standard="33 mm x 48 mm, head 28-33 mm high (15-22 mm wide), crown 3-5 mm from the top edge",
            source="Chinese Visa Application Service Center, Photo requirements, https://www.visaforchina.cn; " + _CN_SOURCE,
        ),
        _preset(
            "japan-passport", "JP", "Japanese passport", (35, 45),
            head=(32, 36), top=(2, 6),
            background="plain, no pattern or shadow (no colour named)",
            standard="縦45mm×横35mm; crown to chin 34 ± 2 mm, crown 4 ± 2 mm from the top edge",
            source="Ministry of Foreign Affairs of Japan, パスポート申請用写真の規格, "
            "https://www.mofa.go.jp/mofaj/toko/passport/ic_photo.html",
        ),
        _preset(
            "germany-passport", "DE", "German passport and identity card (biometric)", (35, 45),
            head=(32, 36),
            background="plain, uniform and light; light grey is best",
            standard="biometric 35x45 mm, chin to crown 32-36 mm (70-80 %)",
            source="Bundesministerium des Innern / Bundesdruckerei, Fotomustertafel and Passbild-Schablone, "
            "https://www.personalausweisportal.de",
        ),
        _preset(
            "france-passport", "FR", "French passport and identity card", (35, 45),
            head=(32, 36),
            background="plain and light (light blue or light grey); white is refused",
            standard="3.5 x 4.5 cm, face 32-36 mm from the bottom of the chin to the top of the skull (hair excluded); "
            "stylefleet's crown is the top of the hair, so a full head of hair comes out a little smaller",
            source="Service-Public.fr, Quelle photo fournir pour un titre d'identité (F10619), "
            "https://www.service-public.fr/particuliers/vosdroits/F10619",
        ),
        _preset(
            "korea-passport", "KR", "Korean passport", (35, 45),
            head=(32, 36),
            background="plain white",
            standard="가로 3.5 cm x 세로 4.5 cm, crown to chin 3.2-3.6 cm",
            source="Ministry of Foreign Affairs of Korea, 여권 사진 규정 (passport photo rules), https://www.passport.go.kr",
        ),
        _preset(
            "hong-kong-passport", "HK", "Hong Kong SAR passport", (40, 50),
            head=(32, 36),
            background="white",
            standard="40 mm wide x 50 mm high, chin to crown 32-36 mm, with head room above",
            source="Immigration Department of the HKSAR, Photo requirements for travel documents, "
            "https://www.immd.gov.hk/eng/residents/immigration/traveldoc/photorequirements.html",
        ),
    )
}

# `custom` sizes take the ICAO proportions, the most widely used rule.
CUSTOM_HEAD_SHARE = _ICAO.head_share
CUSTOM_TOP_SHARE = _ICAO.top_share
CUSTOM_SOURCE = "custom size: ICAO 9303 proportions (head 70-80 %, crown 3-5 mm of 45 from the top)"


@dataclass(frozen=True)
class Frame:
    """The photo to make: exact pixels, the dpi written in its metadata, and the head rule."""

    width_px: int
    height_px: int
    dpi: int
    head_share: Range
    top_share: Range
    eye_share: Range | None = None  # the eye line's band from the top edge, where the preset has one

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
        return Frame(w, h, dpi, preset.head_share, preset.top_share, preset.eye_share)
    if width_px is not None and height_px is not None:
        w, h = width_px, height_px
    elif width_mm is not None and height_mm is not None:
        w, h = mm_to_px(width_mm, dpi), mm_to_px(height_mm, dpi)
    else:
        raise ValueError("size=custom needs width_mm and height_mm, or width_px and height_px")
    return Frame(w, h, dpi, CUSTOM_HEAD_SHARE, CUSTOM_TOP_SHARE)
