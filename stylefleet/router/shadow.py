"""Shadow comparison: which metric a pair of replies is judged by, the figures kept per pair, and
the quality gate those figures pass or fail. Pure: no Ray, no HTTP.

A cutout is judged by its matte (``stylefleet.compare.matte_drift``), every other image by its
pixels (``stylefleet.compare.drift``). The choice is made from the replies themselves, never from
variant or deployment names: a ``remove-background`` reply carries its matte as the alpha channel
of an RGBA cutout, or as the grey image itself when the request asked ``only_mask``; a cutout
flattened onto ``bg_color`` has no matte left and is compared as an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stylefleet.compare import Drift, MatteDrift, drift, matte_drift
from stylefleet.config import Gate, GateSettings

Metric = Literal["matte", "image"]
Verdict = Literal["pass", "fail", "pending"]
GAUGE = {"pass": 1, "fail": 0, "pending": -1}  # stylefleet_shadow_gate's value per verdict

MATTE_TASK = "remove-background"  # the kind task whose replies carry a matte


def matte_of(pixels: np.ndarray, only_mask: bool) -> np.ndarray | None:
    """The HxW matte a remove-background reply carries, or None when it was flattened away."""
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 4:
        return pixels[:, :, 3]
    if only_mask:
        return pixels[:, :, 0]  # the matte repeated in R, G and B
    return None


def mattes(
    task: str, reference: np.ndarray, candidate: np.ndarray, *, reference_only_mask: bool, candidate_only_mask: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both replies' mattes when the pair is compared by matte (a remove-background style whose
    replies both carry one), else None: the pair is compared by image."""
    if task != MATTE_TASK:
        return None
    ref, cand = matte_of(reference, reference_only_mask), matte_of(candidate, candidate_only_mask)
    return None if ref is None or cand is None else (ref, cand)


def compare(
    task: str, reference: np.ndarray, candidate: np.ndarray, *, reference_only_mask: bool, candidate_only_mask: bool
) -> Drift | MatteDrift:
    """The pair's figures, by the metric ``mattes`` picks."""
    pair = mattes(task, reference, candidate, reference_only_mask=reference_only_mask, candidate_only_mask=candidate_only_mask)
    return drift(reference, candidate) if pair is None else matte_drift(*pair)


def expected_metric(task: str, reference: np.ndarray, only_mask: bool) -> Metric:
    """The metric the primary's reply alone implies: where a failed shadow is counted."""
    return "matte" if task == MATTE_TASK and matte_of(reference, only_mask) is not None else "image"


def metric_of(comparison: Drift | MatteDrift) -> Metric:
    return "matte" if isinstance(comparison, MatteDrift) else "image"


Key = tuple[str, str, str, Metric]  # style, primary variant, shadow variant, metric


@dataclass
class _ImageSums:
    count: int = 0
    failed: int = 0
    psnr_db: float = 0.0  # finite values only
    psnr_count: int = 0
    ssim: float = 0.0
    ssim_worst: float = math.inf
    mad: float = 0.0

    def add(self, d: Drift) -> None:
        self.count += 1
        if math.isfinite(d.psnr_db):
            self.psnr_db += d.psnr_db
            self.psnr_count += 1
        self.ssim += d.ssim
        self.ssim_worst = min(self.ssim_worst, d.ssim)
        self.mad += d.mean_abs_diff

    def failing(self, gate: Gate) -> list[str]:
        # Identical pairs (infinite PSNR) are left out of the mean: with none finite, PSNR holds.
        psnr = self.psnr_db / self.psnr_count if self.psnr_count else math.inf
        out = []
        if self.count and self.ssim / self.count < gate.image.min_ssim:
            out.append("min_ssim")
        if self.count and psnr < gate.image.min_psnr_db:
            out.append("min_psnr_db")
        return out

    def figures(self) -> dict[str, Any]:
        n = self.count
        return {
            "identical": n - self.psnr_count,
            "psnr_db_mean": round(self.psnr_db / self.psnr_count, 3) if self.psnr_count else None,
            "ssim_mean": round(self.ssim / n, 5) if n else None,
            "ssim_worst": round(self.ssim_worst, 5) if n else None,
            "mean_abs_diff_mean": round(self.mad / n, 4) if n else None,
        }


@dataclass
class _MatteSums:
    count: int = 0
    failed: int = 0
    identical: int = 0
    iou: float = 0.0
    iou_worst: float = math.inf
    alpha_diff: float = 0.0
    alpha_diff_worst: float = 0.0
    edge_error: float = 0.0
    edge_error_worst: float = 0.0

    def add(self, d: MatteDrift) -> None:
        self.count += 1
        self.identical += d.mean_abs_alpha_diff == 0.0
        self.iou += d.iou
        self.iou_worst = min(self.iou_worst, d.iou)
        self.alpha_diff += d.mean_abs_alpha_diff
        self.alpha_diff_worst = max(self.alpha_diff_worst, d.mean_abs_alpha_diff)
        self.edge_error += d.edge_error
        self.edge_error_worst = max(self.edge_error_worst, d.edge_error)

    def failing(self, gate: Gate) -> list[str]:
        n, out = self.count, []
        if n and self.iou / n < gate.matte.min_iou:
            out.append("min_iou")
        if n and self.alpha_diff / n > gate.matte.max_mean_abs_alpha_diff:
            out.append("max_mean_abs_alpha_diff")
        if n and self.edge_error / n > gate.matte.max_edge_error:
            out.append("max_edge_error")
        return out

    def figures(self) -> dict[str, Any]:
        n = self.count

        def mean(total: float) -> float | None:
            return round(total / n, 5) if n else None

        def worst(value: float) -> float | None:
            return round(value, 5) if n else None

        return {
            "identical": self.identical,
            # the image figures are not measured on mattes: null, so clients reading them still find the keys
            "psnr_db_mean": None,
            "ssim_mean": None,
            "mean_abs_diff_mean": None,
            "iou_mean": mean(self.iou),
            "iou_worst": worst(self.iou_worst),
            "mean_abs_alpha_diff_mean": mean(self.alpha_diff),
            "mean_abs_alpha_diff_worst": worst(self.alpha_diff_worst),
            "edge_error_mean": mean(self.edge_error),
            "edge_error_worst": worst(self.edge_error_worst),
        }


def _sums(metric: Metric) -> _ImageSums | _MatteSums:
    return _MatteSums() if metric == "matte" else _ImageSums()


@dataclass
class ShadowReport:
    """Per (style, primary variant, shadow variant, metric): comparisons, failures, the figures of
    that metric family and the gate's verdict on them. A remove-background pair whose requests
    sometimes flatten the cutout has an image entry beside its matte one."""

    sums: dict[Key, _ImageSums | _MatteSums] = field(default_factory=dict)

    def add(self, pair: tuple[str, str, str], comparison: Drift | MatteDrift) -> Key:
        key: Key = (*pair, metric_of(comparison))
        sums = self.sums.setdefault(key, _sums(key[3]))
        sums.add(comparison)  # type: ignore[arg-type]  # the key's metric matches the comparison's type
        return key

    def fail(self, pair: tuple[str, str, str], metric: Metric) -> None:
        """A shadow that returned no image: counted under the metric its primary's reply implies."""
        key: Key = (*pair, metric)
        self.sums.setdefault(key, _sums(metric)).failed += 1

    def gate(self, key: Key, gates: GateSettings) -> dict[str, Any]:
        """The gate's verdict on ``key``'s means: pending until ``min_comparisons`` comparisons, then
        pass when every threshold of its metric holds, else fail; ``failing`` names those missed
        so far (while pending too)."""
        sums, gate, metric = self.sums[key], gates.for_style(key[0]), key[3]
        failing = sums.failing(gate)
        needed = max(0, gate.min_comparisons - sums.count)
        verdict: Verdict = "pending" if needed else "fail" if failing else "pass"
        thresholds = (gate.matte if metric == "matte" else gate.image).model_dump()
        return {"verdict": verdict, "thresholds": thresholds, "failing": failing, "comparisons_needed": needed}

    def describe(self, gates: GateSettings) -> list[dict[str, Any]]:
        out = []
        for key, sums in sorted(self.sums.items()):
            style, primary, shadow, metric = key
            entry: dict[str, Any] = {"style": style, "primary": primary, "shadow": shadow, "metric": metric}
            entry |= {"comparisons": sums.count, "failed": sums.failed, **sums.figures(), "gate": self.gate(key, gates)}
            out.append(entry)
        return out
