from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from stylefleet import imageio
from stylefleet.errors import InvalidImage, InvalidParams, PayloadTooLarge, UnsupportedMediaType
from tests import samples

MAX = 40_000_000


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda p: samples.encoded(p, "PNG"), (512, 512, 3)),
        (lambda p: samples.encoded(p, "JPEG"), (512, 512, 3)),
        (lambda p: samples.encoded(p, "WEBP"), (512, 512, 3)),
        (lambda p: samples.encoded(p, "BMP"), (512, 512, 3)),
        (lambda p: samples.encoded(p, "TIFF"), (512, 512, 3)),
        (samples.cmyk_jpeg, (512, 512, 3)),
        (samples.png_16bit, (512, 512, 3)),
        (samples.animated_gif, (512, 512, 3)),
        (samples.palette_gif_with_transparency, (512, 512, 4)),
        (samples.rgba_png, (512, 512, 4)),
    ],
    ids=["png", "jpeg", "webp", "bmp", "tiff", "cmyk", "png16", "gif-animated", "gif-palette-alpha", "rgba"],
)
def test_every_supported_input_decodes_to_8bit(make, shape) -> None:
    decoded = imageio.decode(make(samples.astronaut()), max_pixels=MAX)
    assert decoded.pixels.shape == shape
    assert decoded.pixels.dtype == np.uint8


def test_exif_orientation_is_applied() -> None:
    wide = samples.cat()  # 300 high, 451 wide
    decoded = imageio.decode(samples.jpeg_with_orientation(wide, 6), max_pixels=MAX)
    assert decoded.pixels.shape[:2] == (451, 300)


def test_16bit_png_keeps_its_tones() -> None:
    decoded = imageio.decode(samples.png_16bit(samples.astronaut()), max_pixels=MAX)
    grey = np.asarray(Image.fromarray(samples.astronaut()).convert("L"))
    assert np.abs(decoded.pixels[:, :, 0].astype(int) - grey).max() <= 1


def test_animated_gif_takes_the_first_frame() -> None:
    decoded = imageio.decode(samples.animated_gif(samples.astronaut()), max_pixels=MAX)
    second_frame_mean = (255 - samples.astronaut()).mean()
    assert abs(decoded.pixels.mean() - samples.astronaut().mean()) < abs(decoded.pixels.mean() - second_frame_mean)


def test_opaque_alpha_is_dropped() -> None:
    rgba = np.dstack([samples.astronaut(), np.full((512, 512), 255, np.uint8)])
    assert imageio.decode(samples.encoded(rgba), max_pixels=MAX).pixels.shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", InvalidImage),
        (samples.NOT_AN_IMAGE, InvalidImage),
        (samples.truncated_jpeg(samples.astronaut()), InvalidImage),
        (samples.PDF_FILE, UnsupportedMediaType),
        (samples.encoded(samples.astronaut()[:64, :64], "ICO"), UnsupportedMediaType),
        (samples.png_bomb(), PayloadTooLarge),
    ],
    ids=["empty", "text", "truncated", "pdf", "ico", "bomb"],
)
def test_bad_input_raises_its_typed_error(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        imageio.decode(payload, max_pixels=MAX)


def test_pixel_limit_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(self: Image.Image) -> None:
        raise AssertionError("decoded pixels before checking the declared size")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(PayloadTooLarge, match="too many pixels"):
        imageio.decode(samples.png_bomb(), max_pixels=MAX)


def test_max_pixels_is_the_configured_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="max_pixels"):
        imageio.decode(samples.encoded(samples.astronaut()), max_pixels=512 * 511)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_roundtrips(fmt: str) -> None:
    data = imageio.encode(samples.astronaut(), fmt, quality=90)  # type: ignore[arg-type]
    assert Image.open(io.BytesIO(data)).format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]


def test_jpeg_flattens_alpha_onto_white() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    out = np.asarray(Image.open(io.BytesIO(imageio.encode(rgba, "jpeg", quality=95))))
    assert out.min() > 245


def test_png_is_lossless_and_run_length_costs_no_size() -> None:
    fast = imageio.encode(samples.astronaut(), "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), samples.astronaut())
    default_strategy = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(default_strategy, "PNG", compress_level=1)
    assert len(fast) <= len(default_strategy.getvalue())  # Z_RLE: faster than the default strategy, and no bigger


def _png_row_filters(data: bytes) -> set[int]:
    """The filter byte of every row of an 8-bit RGB/RGBA, non-interlaced PNG."""
    pos, idat, width, channels = 8, b"", 0, 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, channels = int.from_bytes(body[:4], "big"), {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * channels
    return {raw[i] for i in range(0, len(raw), stride)}


@pytest.mark.parametrize("channels", [3, 4])
def test_png_uses_one_fixed_filter_and_stays_lossless(channels: int) -> None:
    # Paeth on every row instead of Pillow's per-row search over all five filters (half the
    # encode time); a non-contiguous array (the style network's output is one) encodes as well.
    pixels = samples.astronaut()
    if channels == 4:
        pixels = np.dstack([pixels, np.linspace(0, 255, pixels.shape[1], dtype=np.uint8)[None, :].repeat(pixels.shape[0], 0)])
    transposed = np.ascontiguousarray(pixels.transpose(2, 0, 1)).transpose(1, 2, 0)
    assert not transposed.flags["C_CONTIGUOUS"]
    data = imageio.encode(transposed, "png")
    assert _png_row_filters(data) == {4}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    adaptive = io.BytesIO()
    Image.fromarray(pixels).save(adaptive, "PNG", compress_level=1, compress_type=3)
    assert len(data) <= 1.01 * len(adaptive.getvalue())  # the one filter costs (almost) no size


def test_png_with_dpi_keeps_its_density() -> None:
    data = imageio.encode(samples.astronaut(), "png", dpi=300)
    img = Image.open(io.BytesIO(data))
    assert tuple(round(v) for v in img.info["dpi"]) == (300, 300)
    assert np.array_equal(np.asarray(img), samples.astronaut())


def test_png_refuses_what_is_not_an_8_bit_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        imageio.encode_png(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize(("text", "rgb"), [("#ff0000", (255, 0, 0)), ("00ff00", (0, 255, 0)), ("white", (255, 255, 255))])
def test_parse_color(text: str, rgb: tuple[int, int, int]) -> None:
    assert imageio.parse_color(text) == rgb


def test_parse_color_refuses_nonsense() -> None:
    with pytest.raises(InvalidParams, match="bg_color"):
        imageio.parse_color("#12345z")


# --- draft decoding: a JPEG larger than the output decodes at a reduced scale -------------------

def _large_photo() -> np.ndarray:
    return samples.scaled(samples.astronaut(), 4.0)  # 2048 x 2048


@pytest.mark.parametrize("max_side", [1000, 512, 300, 200], ids=["1/2", "1/4", "1/4-odd", "capped-at-1/4"])
def test_draft_decode_gives_exactly_the_size_a_full_decode_would(max_side: int) -> None:
    data = samples.encoded(_large_photo()[:, :1900], "JPEG", quality=95)
    full = imageio.resize_to_max_side(imageio.decode(data, max_pixels=MAX).pixels, max_side)
    draft = imageio.decode(data, max_pixels=MAX, max_side=max_side).pixels
    assert draft.shape == full.shape
    # Smaller than the full decode's difference from the original photo: a re-encode's worth.
    assert np.abs(draft.astype(int) - full.astype(int)).mean() < 2.0


def test_draft_decode_reads_fewer_pixels() -> None:
    data = samples.encoded(_large_photo(), "JPEG", quality=95)
    img = Image.open(io.BytesIO(data))
    seen: list[tuple[int, int]] = []
    original_load = Image.Image.resize

    def spy(self, size, *args, **kwargs):  # noqa: ANN001, ANN202 - records what the final resize starts from
        seen.append(self.size)
        return original_load(self, size, *args, **kwargs)

    Image.Image.resize = spy  # type: ignore[method-assign]
    try:
        imageio.decode(data, max_pixels=MAX, max_side=256)
    finally:
        Image.Image.resize = original_load  # type: ignore[method-assign]
    assert img.size == (2048, 2048)
    assert seen == [(512, 512)], "libjpeg decoded at 1/4 scale (its most), Lanczos did the rest"


def test_draft_decode_keeps_exif_rotation() -> None:
    wide = samples.scaled(samples.cat(), 4.0)  # 1200 high, 1804 wide
    data = samples.jpeg_with_orientation(wide, 6)  # shown rotated: 1804 high, 1200 wide
    full = imageio.resize_to_max_side(imageio.decode(data, max_pixels=MAX).pixels, 400)
    draft = imageio.decode(data, max_pixels=MAX, max_side=400).pixels
    assert draft.shape == full.shape == (400, 266, 3)
    assert np.abs(draft.astype(int) - full.astype(int)).mean() < 2.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_only_jpeg_is_draft_decoded(fmt: str) -> None:
    data = samples.encoded(samples.astronaut(), fmt)
    assert imageio.decode(data, max_pixels=MAX, max_side=100).pixels.shape == (512, 512, 3)


def test_probe_reads_the_header_and_refuses_what_decode_refuses() -> None:
    header = imageio.probe(samples.encoded(samples.cat(), "JPEG"), max_pixels=MAX)
    assert (header.width, header.height, header.format, header.pixels) == (451, 300, "JPEG", 451 * 300)
    with pytest.raises(PayloadTooLarge):
        imageio.probe(samples.png_bomb(), max_pixels=MAX)
    with pytest.raises(InvalidImage):
        imageio.probe(b"", max_pixels=MAX)
    with pytest.raises(UnsupportedMediaType):
        imageio.probe(b"%PDF-1.4 ...", max_pixels=MAX)
