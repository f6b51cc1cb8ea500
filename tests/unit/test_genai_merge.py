"""Generative styles with what main added beside them: A/B variants, previews, jobs' checks. No Ray."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from stylefleet.config import Limits
from stylefleet.errors import InvalidParams
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.spec import AppSpec
from tests.samples import ROOT
from tests.unit.fakes import FakeBackend, seeded_png

GENAI = yaml.safe_load((ROOT / "serve_config.genai.yaml").read_text())["applications"][0]["args"]


def _with_variants(second: dict[str, Any]) -> dict[str, Any]:
    args = copy.deepcopy(GENAI)
    shot = args["styles"]["product-shot"]
    first = {"name": "a", "deployment": shot.pop("deployment"), "params": shot.pop("params"), "defaults": shot.pop("defaults")}
    shot["variants"] = [first, {**copy.deepcopy(first), "name": "b", **second}]
    return args


def _api(args: dict[str, Any], backend: FakeBackend) -> tuple[TestClient, RouterCore]:
    config = AppSpec.from_args(args)
    core = RouterCore(Catalog(config), backend, max_pixels=config.args.limits.max_pixels)
    return TestClient(create_api(core, Limits(max_upload_bytes=1_000_000))), core


def test_a_variant_brings_its_own_defaults_and_is_named_in_the_answer() -> None:
    backend = FakeBackend(seeded_png)
    api, _ = _api(_with_variants({"defaults": {"prompt": "a teapot", "seed": 9, "steps": 20}}), backend)
    r = api.post("/v1/styles/product-shot?variant=b", json={})
    assert r.status_code == 200 and r.headers["x-stylefleet-variant"] == "b"
    assert r.headers["x-stylefleet-seed"] == "9" and backend.calls[0][1].params["prompt"] == "a teapot"
    r = api.post("/v1/styles/product-shot", json={"variant": "a", "n": 2})
    assert r.headers["x-stylefleet-variant"] == "a" and r.headers["x-stylefleet-seed"] == "1234,1235"


def test_variants_of_one_style_must_fix_the_same_pipeline() -> None:
    args = _with_variants({"params": {**GENAI["styles"]["product-shot"]["params"], "pipeline": "img2img"}})
    with pytest.raises(ValueError, match="same pipeline"):
        Catalog(AppSpec.from_args(args))


def test_a_generative_style_has_no_preview_but_an_image_style_does() -> None:
    backend = FakeBackend(seeded_png)
    api, _ = _api(copy.deepcopy(GENAI), backend)
    r = api.get("/v1/styles/product-shot/preview")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_preview"
    assert backend.calls == []
    api.get("/v1/styles/anime-portrait/preview")  # (the fake answers bytes no decoder reads: status not checked)
    [(deployment, request)] = backend.calls
    assert deployment == "anime-face" and set(request.images) == {"image"}


def test_jobs_refuse_n_and_prompt_only_styles_before_accepting() -> None:
    _, core = _api(copy.deepcopy(GENAI), FakeBackend(seeded_png))
    with pytest.raises(InvalidParams, match="one image per input"):
        core.check("watercolor", {"n": "2"}, ["image"])
    with pytest.raises(InvalidParams, match="takes no file"):
        core.check("product-shot", {}, ["image"])
    style, variant = core.check("watercolor", {"prompt": "a cat"}, ["image"])
    assert (style.name, variant) == ("watercolor", "default")
