"""The generative config: presets, diffusion sources, pinned checksums, validated at deploy time."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from stylefleet.router.catalog import Catalog
from stylefleet.spec import AppSpec
from tests.samples import ROOT

GENAI = yaml.safe_load((ROOT / "serve_config.genai.yaml").read_text())


def _args() -> dict[str, Any]:
    return copy.deepcopy(GENAI["applications"][0]["args"])


def test_the_genai_example_is_valid_without_any_weights() -> None:
    styles = {s.name: s for s in Catalog(AppSpec.from_args(_args()))}
    assert {s.task for s in styles.values()} == {"text-to-image", "img2img", "controlnet-canny", "anime"}
    assert styles["product-shot"].image_fields == ()
    assert styles["watercolor"].image_fields == ("image",)
    assert styles["product-shot"].client_params == {"prompt", "seed", "steps"}  # it fixes its negative prompt
    assert styles["concept-art"].client_params == {"prompt", "seed", "steps", "negative_prompt"}  # a default: open


def test_the_default_app_has_no_generative_style() -> None:
    shipped = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    assert {s.task for s in Catalog(AppSpec.from_args(shipped))} == {"stylize", "restyle", "remove-background", "id-photo"}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda a: a["deployments"]["diffusion"].pop("diffusion"), "diffusion"),
        (lambda a: a["deployments"]["anime-face"].update(diffusion={"model": "/x"}), "diffusion"),
        (lambda a: a["deployments"]["diffusion"]["diffusion"].update(oom_cooldown_s=0), "oom_cooldown_s"),
        (lambda a: a["models"]["animeganv2_paprika"].update(sha256="abc"), "sha256"),
        (lambda a: a["styles"]["product-shot"]["defaults"].update(guidance_scale=3), "guidance_scale"),
        (lambda a: a["limits"].update(max_images_per_request=0), "max_images_per_request"),
    ],
    ids=["sd-without-diffusion", "diffusion-on-another-model", "zero-cooldown", "short-sha256", "default-also-fixed", "zero-images"],
)
def test_bad_generative_config_names_the_field(mutate, needle: str) -> None:
    args = _args()
    mutate(args)
    with pytest.raises(ValidationError, match=needle):
        AppSpec.from_args(args)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s["params"].pop("pipeline"), r"product-shot\.params\.pipeline"),
        (lambda s: s["defaults"].update(steps=45), r"steps: 45 is outside this style's bounds 10\.\.40"),
        (lambda s: s["params"].update(width=100), "width"),
        (lambda s: s.update(defaults={"seed": 1, "canny_low": 50}), r"defaults: canny_low cannot be set by clients"),
    ],
    ids=["no-pipeline", "default-steps-out-of-bounds", "width-not-multiple-of-8", "default-for-a-fixed-param"],
)
def test_bad_presets_fail_at_deploy_time(mutate, needle: str) -> None:
    args = _args()
    mutate(args["styles"]["product-shot"])
    with pytest.raises(ValueError, match=needle):
        Catalog(AppSpec.from_args(args))
