"""The router core with a fake backend: variants, shadow comparison, per-variant figures."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import yaml

from stylefleet.config import RouterSettings
from stylefleet.errors import InvalidParams
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.spec import AppSpec
from tests import samples
from tests.samples import ROOT
from tests.unit import apps
from tests.unit.fakes import FakeBackend, HeldShadow, cutout


class ListRecorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.shadows: list[tuple[str, str, str, float]] = []
        self.mattes: list[tuple[str, str, str, float, float, float]] = []
        self.gates: list[tuple[str, str, str, str, int]] = []

    def request(self, style: str, variant: str, outcome: str, seconds: float) -> None:
        self.requests.append((style, variant, outcome))

    def shadow(self, style: str, primary: str, shadow: str, psnr_db: float, ssim: float, mad: float) -> None:
        self.shadows.append((style, primary, shadow, mad))

    def shadow_matte(self, style: str, primary: str, shadow: str, iou: float, alpha_mad: float, edge_error: float) -> None:
        self.mattes.append((style, primary, shadow, iou, alpha_mad, edge_error))

    def shadow_gate(self, style: str, primary: str, shadow: str, metric: str, value: int) -> None:
        self.gates.append((style, primary, shadow, metric, value))


# A cutout style with three variants on one deployment: erode_px 0 twice (the same matte) and 2.
CUTOUT_AB = {
    "description": "cutout A/B",
    "variants": [
        {"name": "fp32", "deployment": "remove-background", "params": {"erode_px": 0}},
        {"name": "same", "deployment": "remove-background", "params": {"erode_px": 0}},
        {"name": "eroded", "deployment": "remove-background", "params": {"erode_px": 2}},
    ],
}


def _core(backend, recorder, settings: dict) -> RouterCore:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    args["styles"]["cutout-ab"] = CUTOUT_AB
    core = RouterCore(Catalog(AppSpec.from_args(args)), backend, max_pixels=10**8, recorder=recorder, rng=random.Random(3))
    core.apply(RouterSettings.model_validate(settings))
    return core


PHOTO = {"image": samples.encoded(samples.cat())}


def test_shadow_work_neither_delays_nor_fails_the_user_and_records_drift() -> None:
    async def scenario() -> None:
        shadow = HeldShadow()
        backend, recorder = FakeBackend(shadow), ListRecorder()
        core = _core(backend, recorder, {"splits": {"oil-paint": {"a": 1}}, "shadows": {"oil-paint": {"b": 100}}})
        result = await asyncio.wait_for(core.handle("oil-paint", PHOTO, {}), timeout=30)  # the shadow is still blocked
        assert result.variant == "a" and result.image.pixels is None
        shadow.release.set()
        await core.drain_shadows()
        [report] = core.describe_shadows()
        assert (report["primary"], report["shadow"], report["comparisons"]) == ("a", "b", 1)
        assert report["mean_abs_diff_mean"] == pytest.approx(8, abs=0.5)
        assert recorder.shadows == [("oil-paint", "a", "b", pytest.approx(8, abs=0.5))]

    asyncio.run(scenario())


CUTOUT_SHADOWS = {"splits": {"cutout-ab": {"fp32": 1}}, "shadows": {"cutout-ab": {"same": 100, "eroded": 100}}}


def _by_shadow(core: RouterCore) -> dict[tuple[str, str], dict]:
    return {(e["shadow"], e["metric"]): e for e in core.describe_shadows()}


def test_cutout_shadows_are_compared_by_matte_and_gated() -> None:
    async def scenario() -> None:
        recorder = ListRecorder()
        core = _core(FakeBackend(cutout), recorder, {**CUTOUT_SHADOWS, "gates": {"min_comparisons": 2}})
        for _ in range(2):
            await core.handle("cutout-ab", PHOTO, {})
            await core.drain_shadows()
        same, eroded = _by_shadow(core)[("same", "matte")], _by_shadow(core)[("eroded", "matte")]
        assert (same["comparisons"], same["iou_mean"], same["gate"]["verdict"]) == (2, 1.0, "pass")
        assert eroded["iou_mean"] == pytest.approx(14 / 16)  # the step moved from column 16 to 18 of 32
        assert eroded["gate"]["verdict"] == "fail"
        assert eroded["gate"]["failing"] == ["min_iou", "max_mean_abs_alpha_diff", "max_edge_error"]
        assert sorted({m[2] for m in recorder.mattes}) == ["eroded", "same"] and recorder.shadows == []
        first, last = {}, {}
        for _, _, shadow, _, value in recorder.gates:
            first.setdefault(shadow, value)
            last[shadow] = value
        assert first == {"same": -1, "eroded": -1} and last == {"same": 1, "eroded": 0}  # pending, then the verdict

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("fields", "metric"),
    [({"only_mask": "true"}, "matte"), ({"bg_color": "white"}, "image")],
    ids=["only-mask", "flattened"],
)
def test_a_cutout_is_compared_by_matte_while_it_carries_one(fields: dict, metric: str) -> None:
    async def scenario() -> None:
        core = _core(FakeBackend(cutout), ListRecorder(), CUTOUT_SHADOWS)
        await core.handle("cutout-ab", PHOTO, dict(fields))
        await core.drain_shadows()
        assert {e["metric"] for e in core.describe_shadows()} == {metric}

    asyncio.run(scenario())


def test_new_thresholds_reach_the_gate_gauge_without_a_new_comparison() -> None:
    async def scenario() -> None:
        recorder = ListRecorder()
        core = _core(FakeBackend(cutout), recorder, {**CUTOUT_SHADOWS, "gates": {"min_comparisons": 1}})
        await core.handle("cutout-ab", PHOTO, {})
        await core.drain_shadows()
        assert _by_shadow(core)[("eroded", "matte")]["gate"]["verdict"] == "fail"
        recorder.gates.clear()
        core.apply(_loose_gates())
        assert ("cutout-ab", "fp32", "eroded", "matte", 1) in recorder.gates
        assert _by_shadow(core)[("eroded", "matte")]["gate"]["verdict"] == "pass"

    asyncio.run(scenario())


def _loose_gates() -> RouterSettings:
    loose = {"min_iou": 0.5, "max_mean_abs_alpha_diff": 0.5, "max_edge_error": 10.0}
    return RouterSettings.model_validate({**CUTOUT_SHADOWS, "gates": {"min_comparisons": 1, "matte": loose}})


def test_a_failing_shadow_is_counted_and_harms_nothing() -> None:
    async def scenario() -> None:
        shadow = HeldShadow(fails=True)
        backend = FakeBackend(shadow)
        core = _core(backend, ListRecorder(), {"splits": {"oil-paint": {"a": 1}}, "shadows": {"oil-paint": {"b": 100}}})
        result = await core.handle("oil-paint", PHOTO, {})
        shadow.release.set()
        await core.drain_shadows()
        assert result.variant == "a"
        assert core.describe_shadows()[0]["failed"] == 1

    asyncio.run(scenario())


def test_without_shadows_no_pixels_travel_back() -> None:
    async def scenario() -> None:
        backend = FakeBackend(HeldShadow())
        core = _core(backend, ListRecorder(), {"splits": {"oil-paint": {"a": 1, "b": 1}}})
        await core.handle("oil-paint", PHOTO, {})
        assert [c.keep_pixels for c in backend.requests] == [False]

    asyncio.run(scenario())


def test_variants_get_their_own_fixed_params_and_figures() -> None:
    async def scenario() -> None:
        backend, recorder = FakeBackend(HeldShadow()), ListRecorder()
        core = _core(backend, recorder, {"splits": {"oil-paint": {"a": 1, "b": 1}}})
        await core.handle("oil-paint", PHOTO, {"variant": "b"})
        await core.handle("oil-paint", PHOTO, {"variant": "a"})
        with pytest.raises(InvalidParams):
            await core.handle("oil-paint", PHOTO, {"variant": "b", "strength": "0.2"})  # fixed by variant b
        assert backend.requests[0].params["strength"] == 0.7 and backend.requests[1].params["strength"] == 1.0
        assert recorder.requests == [("oil-paint", "b", "ok"), ("oil-paint", "a", "ok"), ("oil-paint", "b", "invalid_params")]

    asyncio.run(scenario())


def test_client_id_field_makes_assignment_sticky() -> None:
    async def scenario() -> None:
        core = _core(FakeBackend(HeldShadow()), ListRecorder(), {"splits": {"oil-paint": {"a": 1, "b": 1}}})
        seen = {(await core.handle("oil-paint", PHOTO, {}, client_key="alice")).variant for _ in range(6)}
        assert len(seen) == 1

    asyncio.run(scenario())


def test_style_descriptions_are_built_once_and_callers_cannot_change_them() -> None:
    core = RouterCore(Catalog(AppSpec.from_args(apps.shipped_args())), FakeBackend(HeldShadow()), max_pixels=10**8)
    first = core.describe_styles()
    first[0]["name"] = "changed"
    assert core.describe_styles()[0]["name"] != "changed"
    style = next(iter(core.catalog))
    assert style.describe() is not style.describe()
    assert style.describe()["params"] is style.describe()["params"], "built once: the schema walk is not redone per request"


def test_styles_json_is_reencoded_when_the_split_changes() -> None:
    core = RouterCore(Catalog(AppSpec.from_args(apps.shipped_args())), FakeBackend(HeldShadow()), max_pixels=10**8)
    before = core.styles_json()
    assert core.styles_json() is before, "encoded once while the split stays"
    core.apply(RouterSettings(splits={"oil-paint": {"a": 0, "b": 100}}))
    oil = next(s for s in json.loads(core.styles_json())["styles"] if s["name"] == "oil-paint")
    assert {v["name"]: v["weight"] for v in oil["variants"]} == {"a": 0, "b": 100}
