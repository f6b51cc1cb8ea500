"""How far two images of the same scene drift apart: PSNR, SSIM and mean absolute difference
for images, IoU, mean alpha difference and edge error for mattes.

Used by shadow variants to compare a candidate's output with production's. Pure numpy/OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


@dataclass(frozen=True)
class Drift:
    psnr_db: float  # inf when identical
    ssim: float  # 1.0 when identical
    mean_abs_diff: float  # 0..255


def _grey(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels[:, :, :3].astype(np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma (Wang et al. 2004), Gaussian window sigma 1.5, as scikit-image does."""
    x, y = _grey(a), _grey(b)
    blur = lambda img: cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    num = (2 * mx * my + _C1) * (2 * cov + _C2)
    den = (mx * mx + my * my + _C1) * (vx + vy + _C2)
    return float(np.mean(num / den))


def drift(reference: np.ndarray, candidate: np.ndarray) -> Drift:
    """Compare on RGB; a candidate of another size is resized to the reference's first."""
    if candidate.shape[:2] != reference.shape[:2]:
        candidate = cv2.resize(candidate, (reference.shape[1], reference.shape[0]), interpolation=cv2.INTER_AREA)
    a = reference[:, :, :3].astype(np.float64)
    b = candidate[:, :, :3].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    psnr = float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))
    return Drift(psnr_db=psnr, ssim=ssim(reference, candidate), mean_abs_diff=float(np.mean(np.abs(a - b))))


@dataclass(frozen=True)
class MatteDrift:
    iou: float  # of the two mattes' subjects (alpha >= 0.5); 1.0 when both are empty
    mean_abs_alpha_diff: float  # 0..1
    edge_error: float  # mean |gradient difference| over the reference's edge band; 0.0 without an edge


EDGE_GRADIENT = 0.05  # Sobel magnitude (alpha units, ksize 3) above which a pixel of the reference is edge
EDGE_BAND = np.ones((5, 5), np.uint8)  # the edge band: those pixels dilated by this


def _gradient(alpha: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(alpha, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(alpha, cv2.CV_32F, 0, 1, ksize=3))


def matte_drift(reference_alpha: np.ndarray, candidate_alpha: np.ndarray) -> MatteDrift:
    """Compare two HxW uint8 mattes (255 = subject); a candidate of another size is resized to the
    reference's first. Where a cutout's quality lives: the subject's extent (IoU), the opacity
    (mean |alpha diff|) and the edge (gradients compared on a band around the reference's edge)."""
    if candidate_alpha.shape[:2] != reference_alpha.shape[:2]:
        size = (reference_alpha.shape[1], reference_alpha.shape[0])
        candidate_alpha = cv2.resize(candidate_alpha, size, interpolation=cv2.INTER_AREA)
    a = reference_alpha.astype(np.float32) / 255.0
    b = candidate_alpha.astype(np.float32) / 255.0
    fa, fb = a >= 0.5, b >= 0.5
    union = int(np.count_nonzero(fa | fb))
    iou = 1.0 if union == 0 else int(np.count_nonzero(fa & fb)) / union
    ga, gb = _gradient(a), _gradient(b)
    band = cv2.dilate((ga > EDGE_GRADIENT).astype(np.uint8), EDGE_BAND) > 0
    edge = float(np.mean(np.abs(ga - gb)[band])) if band.any() else 0.0
    return MatteDrift(iou=float(iou), mean_abs_alpha_diff=float(np.mean(np.abs(a - b))), edge_error=edge)
