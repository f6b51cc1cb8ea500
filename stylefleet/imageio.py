"""Decoding uploads into arrays and encoding results, with the checks that keep a server safe.

Everything here is pure (no Ray) and works on bytes and numpy arrays:

- ``decode`` refuses oversized pixel counts *before* decoding (a decompression bomb declares
  its size in the header), applies EXIF orientation, takes the first frame of animations and
  normalises every mode (L, LA, P, RGBA, CMYK, I;16, F ...) to 8-bit RGB or RGBA.
- ``encode`` writes PNG at a fast compression level (level 6 costs as much as the style model),
  through libpng with one fixed filter (imagecodecs): half of Pillow's time, the same size.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import imagecodecs
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stylefleet.errors import InvalidImage, InvalidParams, PayloadTooLarge, UnsupportedMediaType

# Formats we accept, as Pillow names them. Anything else Pillow can read is a 415.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
OutputFormat = Literal["png", "jpeg", "webp"]
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PNG_COMPRESS_LEVEL = 1
# zlib's run-length strategy: a 512 px photo encodes in ~2/3 of the time of the default strategy
# at level 1, and a little smaller (docs/performance.md "Performance"); PNG is lossless either way.
PNG_COMPRESS_TYPE = 3  # Z_RLE
# One PNG filter for every row (Paeth) instead of trying all five per row as Pillow does: libpng's
# own adaptive choice picks Paeth for nearly every row of these outputs, so the file is the same
# size (within 0.5%) and the encode takes about half the time (13-16 ms less per 512 px output;
# docs/performance.md "PNG encoding").
PNG_FILTER = imagecodecs.PNG.FILTER.PAETH

# Magic numbers of common non-image uploads, so they get a 415 rather than a 400.
_OTHER_MEDIA = (
    (b"%PDF", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"<svg", "image/svg+xml"),
    (b"<?xml", "application/xml"),
)


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit image as HxWx3 (RGB) or HxWx4 (RGBA) uint8, with where it came from."""

    pixels: np.ndarray
    source_format: str

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[2] == 4

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow orders it."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


@dataclass(frozen=True)
class ImageHeader:
    """What an upload's header declares, read without decoding a pixel."""

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(data: bytes, *, max_pixels: int, field: str = "image") -> ImageHeader:
    """The checks of ``decode`` that need only the header (well under a millisecond): empty,
    not an image, unsupported format, too many pixels. A truncated body passes; decode finds it."""
    img = _open(data, max_pixels=max_pixels, field=field)
    return ImageHeader(img.size[0], img.size[1], str(img.format))


def _open(data: bytes, *, max_pixels: int, field: str) -> Image.Image:
    if not data:
        raise InvalidImage(f"the '{field}' file is empty (0 bytes)")
    head = data[:16].lstrip()
    for magic, media_type in _OTHER_MEDIA:
        if head.startswith(magic):
            raise UnsupportedMediaType(
                f"the '{field}' file is {media_type}; send JPEG, PNG, WebP, GIF, BMP or TIFF"
            )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check would warn or raise on its own threshold; we apply ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(f"the '{field}' file is not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(field, None, max_pixels) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"the '{field}' file could not be read: {exc}") from None

    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(
            f"the '{field}' file is {img.format or 'an unknown format'}; "
            "send JPEG, PNG, WebP, GIF, BMP or TIFF"
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the '{field}' file declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise _too_many_pixels(field, (width, height), max_pixels)
    return img


MAX_DRAFT_REDUCTION = 4
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def decode(data: bytes, *, max_pixels: int, field: str = "image", max_side: int | None = None) -> DecodedImage:
    """Decode an uploaded file. Raises InvalidImage, UnsupportedMediaType or PayloadTooLarge.

    ``max_side``: the caller will scale the image down to this longer side. A JPEG larger than
    that is then decoded at a reduced scale (libjpeg's DCT scaling: 1/2 or 1/4, never below
    the target) and brought to exactly the size ``resize_to_max_side`` would give the full
    decode, with the same Lanczos filter: a 12-megapixel photo for a 1024 px output decodes
    several times faster and takes a quarter of the memory or less. The pixels differ from a
    full decode by about what a JPEG re-encode would change (mean 0.2-0.5 of 255 on photos);
    sizes never do.
    """
    img = _open(data, max_pixels=max_pixels, field=field)
    width, height = img.size
    source_format = str(img.format)
    target: tuple[int, int] | None = None
    try:
        if max_side and source_format == "JPEG" and max(width, height) > max_side:
            target = scaled_size(width, height, max_side)
            # Never below the target, and at most 1/4: libjpeg's 1/8 scale averages 8x8 blocks
            # and aliases visibly; from 1/4 the Lanczos step below does the rest.
            scale = max(max_side / max(width, height), 1 / MAX_DRAFT_REDUCTION)
            img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            if img.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                target = (target[1], target[0])
        img.seek(0)  # first frame of GIF / multi-page TIFF
        img.load()
        img = ImageOps.exif_transpose(img)
        pixels = _to_8bit(img)
    except Image.DecompressionBombError:
        raise _too_many_pixels(field, (width, height), max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"the '{field}' file is corrupt or truncated: {exc}") from None
    if target is not None and (pixels.shape[1], pixels.shape[0]) != target:
        pixels = _resize(pixels, target)
    return DecodedImage(pixels=pixels, source_format=source_format)


def _too_many_pixels(field: str, size: tuple[int, int] | None, max_pixels: int) -> PayloadTooLarge:
    declared = f" ({size[0]}x{size[1]})" if size else ""
    return PayloadTooLarge(
        f"the '{field}' image declares too many pixels{declared}; the limit is {max_pixels} (max_pixels)"
    )


def _to_8bit(img: Image.Image) -> np.ndarray:
    """Normalise any Pillow mode to uint8 RGB, or RGBA when the image carries transparency."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
        else:  # F: take 0..1 floats as such, anything else clipped to 0..255
            arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if img.mode == "CMYK":
        img = img.convert("RGB")
    target = "RGBA" if has_alpha else "RGB"
    out = np.asarray(img.convert(target), dtype=np.uint8)
    if has_alpha and bool((out[:, :, 3] == 255).all()):
        out = out[:, :, :3]  # an alpha channel that hides nothing is dropped
    return np.ascontiguousarray(out)


def flatten(pixels: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Composite RGBA onto a solid colour; RGB passes through unchanged."""
    if pixels.shape[2] == 3:
        return pixels
    rgb = pixels[:, :, :3].astype(np.uint16)
    alpha = pixels[:, :, 3:4].astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16).reshape(1, 1, 3)
    out = (rgb * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def parse_color(value: str) -> tuple[int, int, int]:
    """``#rrggbb``, ``rrggbb`` or a few names; raises InvalidParams naming the bad value."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "transparent": None}
    text = value.strip().lower()
    if text in named and named[text] is not None:
        return named[text]  # type: ignore[return-value]
    hexpart = text[1:] if text.startswith("#") else text
    if len(hexpart) == 6:
        try:
            return (int(hexpart[0:2], 16), int(hexpart[2:4], 16), int(hexpart[4:6], 16))
        except ValueError:
            pass
    raise InvalidParams(f"bg_color {value!r} is not a colour; use #rrggbb, 'white' or 'black'")


def encode(pixels: np.ndarray, fmt: OutputFormat = "png", quality: int = 90,
           dpi: int | None = None) -> bytes:
    """Encode an HxWx3/4 uint8 array. JPEG has no alpha, so RGBA is flattened onto white."""
    if fmt not in CONTENT_TYPES:
        raise InvalidParams(f"format {fmt!r} is not one of {sorted(CONTENT_TYPES)}")
    if fmt == "png" and not dpi:
        return encode_png(pixels)
    if fmt == "jpeg":
        pixels = flatten(pixels)
    img = Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB")
    buf = io.BytesIO()
    extra: dict[str, object] = {}
    if dpi:
        extra["dpi"] = (dpi, dpi)
    if fmt == "png":  # with a dpi (ID photos): Pillow writes the pHYs chunk
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE, **extra)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, optimize=False, **extra)
    else:
        img.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def encode_png(pixels: np.ndarray) -> bytes:
    """An HxWx3/4 uint8 array as PNG (RGB or RGBA, 8 bits), lossless, through libpng."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"encode_png takes HxWx3/4 uint8, not {pixels.dtype} {pixels.shape}")
    data = imagecodecs.png_encode(
        np.ascontiguousarray(pixels), level=PNG_COMPRESS_LEVEL, strategy=PNG_COMPRESS_TYPE, filter=PNG_FILTER
    )
    return data if isinstance(data, bytes) else bytes(data)


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after ``resize_to_max_side``: scaled down so the longer side is at most ``max_side``."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_to_max_side(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side``; Lanczos, like the models' own code."""
    h, w = pixels.shape[:2]
    size = scaled_size(w, h, max_side)
    return pixels if size == (w, h) else _resize(pixels, size)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    return np.asarray(Image.fromarray(pixels, mode).resize(size, Image.Resampling.LANCZOS))
