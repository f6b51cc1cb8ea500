"""A/B assignment: sticky, weighted, deterministic across processes; traffic validation."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from stylefleet.config import RouterSettings
from stylefleet.errors import InvalidParams
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import build_traffic
from stylefleet.router.variants import choose_variant, key_point, pick
from stylefleet.spec import AppSpec
from tests.samples import ROOT

KEYS = [f"client-{i}" for i in range(10_000)]


def test_a_client_always_gets_the_same_variant() -> None:
    weights = {"a": 70.0, "b": 30.0}
    first = {k: choose_variant("oil-paint", weights, client_key=k) for k in KEYS[:500]}
    again = {k: choose_variant("oil-paint", weights, client_key=k) for k in KEYS[:500]}
    assert first == again


@pytest.mark.parametrize("weights", [{"a": 50, "b": 50}, {"a": 90, "b": 10}, {"a": 1, "b": 2, "c": 7}])
def test_shares_over_10000_keys_match_the_weights_within_2_points(weights: dict[str, float]) -> None:
    counts = Counter(choose_variant("oil-paint", weights, client_key=k) for k in KEYS)
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / len(KEYS) - weight / total) < 0.02, counts


def test_zero_weight_variants_are_never_chosen() -> None:
    weights = {"a": 0.0, "b": 1.0, "c": 0.0}
    assert {choose_variant("s", weights, client_key=k) for k in KEYS} == {"b"}
    assert {choose_variant("s", weights, rng=random.Random(1)) for _ in range(2000)} == {"b"}
    assert pick(0.0, weights) == "b" and pick(0.999999999, weights) == "b"


def test_keyless_requests_are_split_by_weight() -> None:
    rng = random.Random(7)
    counts = Counter(choose_variant("s", {"a": 75, "b": 25}, rng=rng) for _ in range(10_000))
    assert abs(counts["a"] / 10_000 - 0.75) < 0.02


def test_the_style_name_is_part_of_the_hash() -> None:
    assert key_point("oil-paint", "alice") != key_point("watercolour", "alice")


def test_assignment_does_not_depend_on_listing_order() -> None:
    assert all(
        choose_variant("s", {"a": 1, "b": 3}, client_key=k) == choose_variant("s", {"b": 3, "a": 1}, client_key=k) for k in KEYS[:300]
    )


def test_same_assignment_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from stylefleet.router.variants import choose_variant;"
        "print(''.join(choose_variant('oil-paint', {'a': 50, 'b': 50}, client_key=f'client-{i}') for i in range(200)))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    here = "".join(choose_variant("oil-paint", {"a": 50, "b": 50}, client_key=f"client-{i}") for i in range(200))
    assert outs == {here + "\n"}


def test_a_forced_variant_wins_and_an_unknown_one_is_422() -> None:
    assert choose_variant("s", {"a": 100, "b": 0}, forced="b") == "b"
    with pytest.raises(InvalidParams, match="variant"):
        choose_variant("s", {"a": 1}, forced="zz")


def _spec() -> AppSpec:
    return AppSpec.from_args(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])


def _catalog() -> Catalog:
    return Catalog(_spec())


def test_styles_without_a_split_share_equally_and_shadows_get_no_live_traffic() -> None:
    traffic = build_traffic(_catalog(), RouterSettings(shadows={"oil-paint": {"b": 10}}))
    assert traffic.weights["oil-paint"] == {"a": 1.0, "b": 0.0}
    assert traffic.weights["frost"] == {"default": 1.0}
    assert traffic.shadows["oil-paint"] == {"b": 10}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"splits": {"oil-paint": {"a": -1, "b": 5}}}, "splits.oil-paint.a"),
        ({"splits": {"oil-paint": {"a": 0, "b": 0}}}, "splits.oil-paint"),
        ({"splits": {"oil-paint": {"zz": 1}}}, "splits.oil-paint.zz"),
        ({"splits": {"nope": {"a": 1}}}, "splits.nope"),
        ({"shadows": {"oil-paint": {"b": 150}}}, "shadows.oil-paint.b"),
        ({"gates": {"matte": {"min_iou": 1.5}}}, "gates.matte.min_iou"),
        ({"gates": {"matte": {"max_edge_error": -0.1}}}, "gates.matte.max_edge_error"),
        ({"gates": {"image": {"min_psnr_db": -1}}}, "gates.image.min_psnr_db"),
        ({"gates": {"matte": {"min_iuo": 0.9}}}, "gates.matte.min_iuo"),
        ({"gates": {"min_comparisons": 0}}, "gates.min_comparisons"),
        ({"gates": {"styles": {"nope": {}}}}, "gates.styles.nope"),
        ({"gates": {"styles": {"oil-paint": {"image": {"min_ssim": 2}}}}}, "gates.styles.oil-paint: image.min_ssim"),
    ],
    ids=[
        "negative", "all-zero", "unknown-variant", "unknown-style", "bad-percent",
        "iou-over-1", "negative-edge-error", "negative-psnr", "misspelt-threshold", "no-comparisons",
        "gate-of-unknown-style", "bad-style-override",
    ],
)
def test_bad_traffic_settings_name_the_field(settings: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        _spec().traffic_settings(settings)


@pytest.mark.parametrize(
    ("style", "field"),
    [
        ({"variants": [{"name": "a", "deployment": "stylize"}, {"name": "a", "deployment": "stylize"}]}, "unique"),
        ({"variants": [{"name": "a", "deployment": "nope"}]}, r"variants\[0\]\.deployment"),
        ({"variants": [{"name": "a", "deployment": "stylize"}, {"name": "b", "deployment": "restyle"}]}, "same kind"),
        ({"deployment": "stylize", "variants": [{"name": "a", "deployment": "stylize"}]}, "not both"),
    ],
    ids=["duplicate-names", "unknown-deployment", "mixed-kinds", "both"],
)
def test_bad_variant_config_names_the_field(style: dict, field: str) -> None:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    args["styles"]["ab"] = style
    with pytest.raises(ValueError, match=field):
        AppSpec.from_args(args)


def test_gate_defaults_and_a_style_override_merged_field_by_field() -> None:
    gates = _spec().traffic_settings({"gates": {"min_comparisons": 5, "styles": {"oil-paint": {"matte": {"min_iou": 0.99}}}}}).gates
    assert gates.for_style("frost").model_dump() == {
        "matte": {"min_iou": 0.98, "max_mean_abs_alpha_diff": 0.01, "max_edge_error": 0.08},
        "image": {"min_ssim": 0.95, "min_psnr_db": 30.0},
        "min_comparisons": 5,
    }
    oil = gates.for_style("oil-paint")
    assert (oil.matte.min_iou, oil.matte.max_edge_error, oil.min_comparisons) == (0.99, 0.08, 5)
