"""Shadow comparison without a router: which metric a pair of replies gets, and the gate's verdicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stylefleet.compare import Drift, MatteDrift, matte_drift
from stylefleet.config import GateSettings
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.router.shadow import ShadowReport, mattes
from tests import samples

ALPHA = np.tile(np.linspace(0, 255, 8).astype(np.uint8), (6, 1))
RGB = np.full((6, 8, 3), 90, np.uint8)
RGBA = np.dstack([RGB, ALPHA])
GREY = np.repeat(ALPHA[:, :, None], 3, axis=2)  # an only_mask reply
FLAT = RGB  # a cutout flattened onto bg_color


@pytest.mark.parametrize(
    ("task", "reference", "candidate", "only_mask", "expected"),
    [
        ("remove-background", RGBA, RGBA, (False, False), "matte"),
        ("remove-background", GREY, GREY, (True, True), "matte"),
        ("remove-background", GREY, RGBA, (True, False), "matte"),
        ("remove-background", FLAT, FLAT, (False, False), "image"),
        ("remove-background", RGBA, FLAT, (False, False), "image"),
        ("remove-background", GREY, GREY, (False, False), "image"),  # grey, but no matte was asked for
        ("stylize", RGBA, RGBA, (False, False), "image"),
        ("id-photo", RGB, RGB, (False, False), "image"),
    ],
    ids=["rgba", "only-mask", "mask-vs-rgba", "flattened", "one-flattened", "grey-photo", "other-task-rgba", "other-task"],
)
def test_the_metric_follows_the_task_and_the_replies(task, reference, candidate, only_mask, expected) -> None:
    pair = mattes(task, reference, candidate, reference_only_mask=only_mask[0], candidate_only_mask=only_mask[1])
    assert ("image" if pair is None else "matte") == expected
    if pair is not None:
        assert all(np.array_equal(m, ALPHA) for m in pair), "the matte is the alpha channel, or the grey itself"


PAIR = ("remove-background", "fp32", "int8")
GOOD_MATTE = MatteDrift(iou=0.995, mean_abs_alpha_diff=0.004, edge_error=0.02)
GATES = GateSettings(min_comparisons=3)


def _report(*comparisons: Drift | MatteDrift, pair: tuple[str, str, str] = PAIR) -> ShadowReport:
    report = ShadowReport()
    for c in comparisons:
        report.add(pair, c)
    return report


def test_a_pair_is_pending_until_min_comparisons() -> None:
    [entry] = _report(GOOD_MATTE, GOOD_MATTE).describe(GATES)
    assert entry["metric"] == "matte"
    assert entry["gate"] == {
        "verdict": "pending",
        "thresholds": {"min_iou": 0.98, "max_mean_abs_alpha_diff": 0.01, "max_edge_error": 0.08},
        "failing": [],
        "comparisons_needed": 1,
    }


def test_a_pair_passes_when_every_threshold_holds_on_the_means() -> None:
    worse = MatteDrift(iou=0.975, mean_abs_alpha_diff=0.012, edge_error=0.06)  # misses all three on its own
    [entry] = _report(GOOD_MATTE, GOOD_MATTE, GOOD_MATTE, worse).describe(GATES)
    assert entry["gate"]["verdict"] == "pass" and entry["gate"]["comparisons_needed"] == 0
    assert entry["iou_mean"] == pytest.approx((3 * 0.995 + 0.975) / 4) and entry["iou_worst"] == 0.975
    assert entry["mean_abs_alpha_diff_worst"] == 0.012 and entry["edge_error_worst"] == 0.06


@pytest.mark.parametrize(
    ("drift", "failing"),
    [
        (MatteDrift(iou=0.9, mean_abs_alpha_diff=0.004, edge_error=0.02), ["min_iou"]),
        (MatteDrift(iou=0.99, mean_abs_alpha_diff=0.03, edge_error=0.02), ["max_mean_abs_alpha_diff"]),
        (MatteDrift(iou=0.99, mean_abs_alpha_diff=0.004, edge_error=0.2), ["max_edge_error"]),
        (MatteDrift(iou=0.5, mean_abs_alpha_diff=0.3, edge_error=1.0), ["min_iou", "max_mean_abs_alpha_diff", "max_edge_error"]),
        (Drift(psnr_db=25.0, ssim=0.97, mean_abs_diff=3.0), ["min_psnr_db"]),
        (Drift(psnr_db=35.0, ssim=0.8, mean_abs_diff=3.0), ["min_ssim"]),
    ],
    ids=["iou", "alpha-diff", "edge", "all-matte", "psnr", "ssim"],
)
def test_a_pair_fails_naming_the_thresholds_it_misses(drift: Drift | MatteDrift, failing: list[str]) -> None:
    [entry] = _report(drift, drift, drift).describe(GATES)
    assert (entry["gate"]["verdict"], entry["gate"]["failing"]) == ("fail", failing)


def test_identical_images_pass_and_the_image_figures_keep_their_fields() -> None:
    same = Drift(psnr_db=math.inf, ssim=1.0, mean_abs_diff=0.0)
    [entry] = _report(same, same, same, pair=("oil-paint", "a", "b")).describe(GATES)
    assert entry["metric"] == "image" and entry["gate"]["verdict"] == "pass"
    assert entry["gate"]["thresholds"] == {"min_ssim": 0.95, "min_psnr_db": 30.0}
    assert (entry["identical"], entry["psnr_db_mean"], entry["ssim_mean"], entry["ssim_worst"]) == (3, None, 1.0, 1.0)


def test_failed_shadows_do_not_count_towards_the_verdict() -> None:
    report = _report(GOOD_MATTE, GOOD_MATTE)
    report.fail(PAIR, "matte")
    [entry] = report.describe(GATES)
    assert (entry["comparisons"], entry["failed"], entry["gate"]["verdict"]) == (2, 1, "pending")


def test_a_style_override_judges_only_that_style() -> None:
    gates = GateSettings(min_comparisons=1, styles={"remove-background": {"matte": {"min_iou": 0.999}}})
    report = _report(GOOD_MATTE)
    report.add(("other-cutout", "a", "b"), GOOD_MATTE)
    verdicts = {e["style"]: e["gate"]["verdict"] for e in report.describe(gates)}
    assert verdicts == {"remove-background": "fail", "other-cutout": "pass"}


def test_a_pair_compared_both_ways_has_an_entry_per_metric() -> None:
    report = _report(GOOD_MATTE, Drift(psnr_db=40.0, ssim=0.99, mean_abs_diff=1.0))
    assert [(e["metric"], e["comparisons"]) for e in report.describe(GATES)] == [("image", 1), ("matte", 1)]


@pytest.fixture(scope="module")
def u2net() -> Any:
    from stylefleet.deployments.background import U2NetModel
    from stylefleet.deployments.onnx_session import RuntimeOptions
    from stylefleet.deployments.registry import resolve

    return U2NetModel(resolve("u2netp"), RuntimeOptions(device="cpu", threads=1))


@pytest.mark.parametrize("photo", ["cat", "astronaut", "coffee"])
def test_the_default_matte_gate_tells_a_4px_erosion_from_the_same_matte(u2net: Any, photo: str) -> None:
    image = getattr(samples, photo)()

    def matte(**params: Any) -> np.ndarray:
        [out] = run_batch(u2net, [ModelRequest({"image": image}, {"only_mask": True, **params}, None)])
        return out[:, :, 0]

    gates, reference = GateSettings(min_comparisons=1), matte()
    same, eroded = _report(matte_drift(reference, matte())), _report(matte_drift(reference, matte(erode_px=4)))
    assert same.describe(gates)[0]["gate"]["verdict"] == "pass"
    assert eroded.describe(gates)[0]["gate"]["failing"] == ["min_iou", "max_mean_abs_alpha_diff", "max_edge_error"]
