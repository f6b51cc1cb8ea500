"""Measuring an ID photo after the fact, for both test tiers: where the face and head ended up.

The crown is the first row whose middle pixels differ from the background colour: no detector
needed. The face is found again in the output with the same Haar cascades (a fresh detection on
new pixels), which works for frontal faces; the profile cascade does not find the camera man
again once he fills the frame, so profile portraits are checked against their marked heads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from stylefleet.deployments.faces import Face, HaarFaceModel, faces_from_array
from stylefleet.deployments.idphoto import CHIN_BELOW_BOX_TOP
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import resolve


@cache
def detector() -> HaarFaceModel:
    return HaarFaceModel(resolve("haarcascade_frontalface_default"), resolve("haarcascade_profileface"), RuntimeOptions(threads=1))


def faces_in(rgb: np.ndarray) -> list[Face]:
    from stylefleet.deployments.batching import ModelRequest, run_batch

    [rows] = run_batch(detector(), [ModelRequest({"image": rgb})])
    assert isinstance(rows, np.ndarray), rows
    return faces_from_array(rows)


@dataclass(frozen=True)
class Measured:
    face_centre_share: float  # face centre's distance from the middle, over the width
    head_share: float  # chin to crown over the height
    top_share: float  # crown to the top edge over the height


def crown_row(rgb: np.ndarray, bg: tuple[int, int, int]) -> int:
    """The first row where most of the middle fifth of the width is not the background."""
    w = rgb.shape[1]
    differs = np.abs(rgb[:, int(0.4 * w):int(0.6 * w)].astype(int) - np.array(bg)).sum(axis=2) > 60
    return int(np.flatnonzero(differs.mean(axis=1) >= 0.5)[0])


def measure(rgb: np.ndarray, bg: tuple[int, int, int]) -> Measured:
    """For a frontal face: its centre, head height and crown margin, as shares of the photo."""
    [face] = faces_in(rgb)
    h, w = rgb.shape[:2]
    crown = crown_row(rgb, bg)
    chin = face.y + CHIN_BELOW_BOX_TOP[face.profile] * face.height
    return Measured(abs(face.centre_x - w / 2) / w, (chin - crown) / h, crown / h)


def read(data: bytes) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Pixels (RGB), dpi and format of an encoded file."""
    img = Image.open(io.BytesIO(data))
    dpi = img.info.get("dpi")
    return np.asarray(img.convert("RGB")), (round(dpi[0]), round(dpi[1])) if dpi else None, str(img.format)


def count_copies(sheet: np.ndarray, bg: tuple[int, int, int], photo_width: int) -> int:
    """Copies on a print sheet: background regions spanning a photo's width (the strip above each head)."""
    import cv2

    mask = (np.abs(sheet.astype(int) - np.array(bg)).sum(axis=2) < 30).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    return int(sum(1 for s in stats[1:] if 0.9 * photo_width <= s[cv2.CC_STAT_WIDTH] <= photo_width + 2))  # +2: resampling rounds
