"""Real photos (scikit-image's samples) and generated odd files, shared by both test tiers."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]  # the repository


@cache
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())  # 512x512 RGB portrait


@cache
def cat() -> np.ndarray:
    return np.ascontiguousarray(data.chelsea())  # 300x451 RGB


@cache
def coffee() -> np.ndarray:
    return np.ascontiguousarray(data.coffee())  # 400x600 RGB, no person


def encoded(pixels: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to rotate it (6 = rotate 90 degrees clockwise to display)."""
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def cmyk_jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_16bit(pixels: np.ndarray) -> bytes:
    grey = (np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey, "I;16").save(buf, "PNG")
    return buf.getvalue()


def palette_gif_with_transparency(pixels: np.ndarray) -> bytes:
    img = Image.fromarray(pixels).convert("P", palette=Image.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    img.save(buf, "GIF", transparency=0)
    return buf.getvalue()


def animated_gif(pixels: np.ndarray) -> bytes:
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def rgba_png(pixels: np.ndarray) -> bytes:
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    rgba[: pixels.shape[0] // 2, :, 3] = 0  # top half transparent
    return encoded(rgba, "PNG")


def truncated_jpeg(pixels: np.ndarray) -> bytes:
    whole = encoded(pixels, "JPEG", quality=90)
    return whole[: len(whole) // 2]


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that declares width x height pixels: must be refused before decoding."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


NOT_AN_IMAGE = b"hello, this is plainly a text file and not a picture\n" * 4
PDF_FILE = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@cache
def camera() -> np.ndarray:
    """The camera man (512x512 greyscale, as RGB): a portrait in profile, looking left."""
    return np.ascontiguousarray(np.repeat(data.camera()[:, :, None], 3, axis=2))


@dataclass(frozen=True)
class Portrait:
    """A real portrait with its head marked by eye on the pixels: crown (top of the hair), chin,
    and for a frontal face the middle between the eyes (a profile has no such centre)."""

    name: str
    pixels: np.ndarray
    crown_y: float
    chin_y: float
    profile: bool
    centre_x: float | None = None


def same_up_to_batch_rounding(a: np.ndarray, b: np.ndarray) -> bool:
    """The same generated image: batched float maths (a batch of 1 vs. 4, or another batch
    composition) may move a few values by one level, never more (docs/generative.md)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.01


def scaled(pixels: np.ndarray, factor: float) -> np.ndarray:
    h, w = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels).resize((round(w * factor), round(h * factor)), Image.LANCZOS))


def portraits() -> list[Portrait]:
    """The astronaut and the camera man, and variants flipped and scaled (marks follow them)."""
    astro = Portrait("astronaut", astronaut(), crown_y=15, chin_y=164, profile=False, centre_x=223)
    cam = Portrait("camera-man", camera(), crown_y=65, chin_y=190, profile=True)
    out = [astro, cam]
    for p in (astro, cam):
        width = p.pixels.shape[1]
        centre = None if p.centre_x is None else width - 1 - p.centre_x
        out.append(Portrait(f"{p.name}-flipped", np.ascontiguousarray(p.pixels[:, ::-1]), p.crown_y, p.chin_y, p.profile, centre))
    for factor in (0.75, 1.5):
        out.append(Portrait(f"astronaut-x{factor}", scaled(astronaut(), factor), 15 * factor, 164 * factor, False, 223 * factor))
    return out


def side_by_side() -> np.ndarray:
    """Two portraits in one photo: the astronaut and her mirror image."""
    return np.ascontiguousarray(np.hstack([astronaut(), astronaut()[:, ::-1]]))
