"""Stable Diffusion in-process, on tiny models of the real architectures: sizes, seeds, grouping, OOM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylefleet.config import DiffusionSource
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.diffusion import DiffusionModel, DiffusionParams, canny_edges, fit_size
from stylefleet.deployments.memory import BatchLimiter
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.errors import InvalidParams, ModelUnavailable, Overloaded, StylefleetError
from tests import genai_models, samples

PRESET: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0, "prompt": "a red bicycle"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return genai_models.build_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def sd(folders: tuple[Path, Path]) -> DiffusionModel:
    base, controlnet = folders
    return DiffusionModel.load(
        DiffusionSource(model=str(base), controlnet=str(controlnet), vae_slicing_min_batch=3),
        RuntimeOptions(device="cpu", threads=1),
        setting="deployments.sd.diffusion",
    )


@pytest.fixture()
def clean(sd: DiffusionModel):
    """The shared model with its call log emptied and its batch limit reset after the test."""
    sd.calls.clear()
    sd.limiter = BatchLimiter(configured=8)
    yield sd
    sd.calls.clear()


def _request(images: dict[str, np.ndarray] | None = None, **params: Any) -> ModelRequest:
    return ModelRequest(images or {}, {**PRESET, **params})


def _ok(outcome: np.ndarray | StylefleetError) -> np.ndarray:
    assert isinstance(outcome, np.ndarray), outcome
    return outcome


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same image: batched float maths may move a few values by one level, never more."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.01


@pytest.mark.parametrize(
    ("params", "image", "shape"),
    [
        ({"pipeline": "text-to-image"}, None, (64, 64, 3)),
        ({"pipeline": "text-to-image", "width": 96}, None, (64, 96, 3)),
        ({"pipeline": "img2img", "strength": 0.6}, "cat", (40, 64, 3)),
        ({"pipeline": "controlnet-canny"}, "cat", (40, 64, 3)),
        ({"pipeline": "controlnet-canny", "width": 128, "height": 128}, "astronaut", (128, 128, 3)),
    ],
    ids=["t2i-square", "t2i-wide", "img2img-fits-box", "controlnet-fits-box", "controlnet-upscales"],
)
def test_each_pipeline_returns_an_image_of_the_expected_size(clean, params, image, shape) -> None:
    images = {"image": getattr(samples, image)()} if image else {}
    [out] = run_batch(clean, [_request(images, **params)])
    assert _ok(out).shape == shape and out.dtype == np.uint8
    assert out.std() > 1  # a picture, not a flat fill


def test_fit_size_keeps_aspect_in_multiples_of_8() -> None:
    assert fit_size(300, 451, 512, 512) == (512, 336)
    assert fit_size(512, 512, 768, 512) == (512, 512)
    assert fit_size(1000, 100, 512, 512) == (48, 512)


@pytest.mark.parametrize("pipeline", ["text-to-image", "img2img", "controlnet-canny"])
def test_same_seed_same_image_alone_and_in_a_batch_of_4(clean, pipeline: str) -> None:
    images = {} if pipeline == "text-to-image" else {"image": samples.astronaut()}
    target = _request(images, pipeline=pipeline, seed=1234, prompt="a lighthouse")
    mates = [_request(images, pipeline=pipeline, seed=s, prompt=p) for s, p in ((1, "x"), (2, "a dog"), (3, "fog"))]
    [alone] = run_batch(clean, [target])
    together = run_batch(clean, [mates[0], target, mates[1], mates[2]])
    assert [c.batch for c in clean.calls] == [1, 4]  # really one call of 4
    assert _close(_ok(alone), _ok(together[1]))


def test_different_seeds_give_different_images(clean) -> None:
    a, b = run_batch(clean, [_request(seed=1), _request(seed=2)])
    assert np.abs(_ok(a).astype(int) - _ok(b)).mean() > 5


def test_the_prompt_matters(clean) -> None:
    a, b = run_batch(clean, [_request(prompt="a cat"), _request(prompt="zzzz qqq")])
    assert np.abs(_ok(a).astype(int) - _ok(b)).mean() > 1


class Spy:
    """Wraps a pipeline; records the keyword arguments of every call and can fail some of them."""

    def __init__(self, pipe: Any, fail_above: int | None = None) -> None:
        self.pipe = pipe
        self.fail_above = fail_above
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.fail_above is not None and len(kwargs["prompt"]) > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.pipe(**kwargs)


@pytest.fixture()
def spied(clean):
    originals = dict(clean.pipelines)
    clean.pipelines = {k: Spy(v) for k, v in originals.items()}
    yield clean
    clean.pipelines = originals


def test_incompatible_requests_never_share_a_pipeline_call(spied) -> None:
    photo = {"image": samples.cat()}
    requests = [
        _request(seed=1),
        _request(seed=2, steps=3),  # other steps
        _request(seed=3, width=96),  # other size
        _request(photo, seed=4, pipeline="img2img"),
        _request(seed=5),
        _request(photo, seed=6, pipeline="img2img", strength=0.5),  # other strength
        _request(seed=7, guidance_scale=2.0),  # other guidance
        _request(photo, seed=8, pipeline="controlnet-canny"),
        _request(seed=9, prompt="another subject"),  # prompts differ per item: shares the call
    ]
    assert all(isinstance(o, np.ndarray) for o in run_batch(spied, requests))
    received = [
        (name, tuple(c.get("width", 0) for _ in [0]), c["num_inference_steps"], c["guidance_scale"], c.get("strength"),
         tuple(g.initial_seed() for g in c["generator"]))
        for name, spy in spied.pipelines.items() for c in spy.calls
    ]
    assert sorted(seeds for *_, seeds in received) == [(1, 5, 9), (2,), (3,), (4,), (6,), (7,), (8,)]
    shared = next(c for c in spied.pipelines["text-to-image"].calls if len(c["prompt"]) == 3)
    assert (shared["width"], shared["height"], shared["num_inference_steps"], shared["guidance_scale"]) == (64, 64, 2, 5.0)
    assert shared["prompt"] == ["a red bicycle", "a red bicycle", "another subject"]
    [strength_05] = [c for c in spied.pipelines["img2img"].calls if c["strength"] == 0.5]
    assert [g.initial_seed() for g in strength_05["generator"]] == [6]


def test_out_of_memory_splits_the_batch_in_half_and_retries(clean) -> None:
    alone = [_ok(o) for o in run_batch(clean, [_request(seed=s) for s in (11, 12, 13, 14)][:1])]
    clock = [100.0]
    clean.limiter = BatchLimiter(configured=8, cooldown_s=60, clock=lambda: clock[0])
    spy = Spy(clean.pipelines["text-to-image"], fail_above=2)
    clean.pipelines = {**clean.pipelines, "text-to-image": spy}
    try:
        out = run_batch(clean, [_request(seed=s) for s in (11, 12, 13, 14)])
    finally:
        clean.pipelines = {**clean.pipelines, "text-to-image": spy.pipe}
    assert [len(c["prompt"]) for c in spy.calls] == [4, 2, 2]  # the real splitting code ran
    assert all(isinstance(o, np.ndarray) for o in out)
    assert _close(alone[0], out[0])  # the split halves still give each seed its own image
    assert clean.limiter.limit == 2 and clean.limiter.oom_total == 1
    clock[0] += 61
    assert clean.limiter.limit == 8  # back after the cool-down


def test_lowered_limit_chunks_the_next_batches(clean) -> None:
    clean.limiter.record_oom(4)
    out = run_batch(clean, [_request(seed=s) for s in range(5)])
    assert all(isinstance(o, np.ndarray) for o in out)
    assert [c.batch for c in clean.calls] == [2, 2, 1]


def test_a_single_image_that_does_not_fit_is_503_overloaded(clean) -> None:
    spy = Spy(clean.pipelines["text-to-image"], fail_above=0)
    clean.pipelines = {**clean.pipelines, "text-to-image": spy}
    try:
        [out] = run_batch(clean, [_request()])
    finally:
        clean.pipelines = {**clean.pipelines, "text-to-image": spy.pipe}
    assert isinstance(out, Overloaded) and out.status == 503 and out.headers["Retry-After"]


class FakePipe:
    """Stands in for a 512x512 pipeline on CPU, where the probe itself would take minutes."""

    class vae:  # noqa: N801 - mimics the attribute
        enable_slicing = disable_slicing = staticmethod(lambda: None)

    def __call__(self, **kwargs: Any) -> Any:
        return type("Output", (), {"images": np.zeros((len(kwargs["prompt"]), 8, 8, 3), np.float32)})()


def test_probe_finds_the_largest_batch_that_fits(clean) -> None:
    original = clean.pipelines
    spy = Spy(FakePipe(), fail_above=5)
    clean.pipelines = {**original, "text-to-image": spy}
    try:
        assert clean.probe_batch_limit(upper_images=32) == 5
    finally:
        clean.pipelines = original
    assert [len(c["prompt"]) for c in spy.calls] == [1, 2, 4, 8, 6, 5]  # doubling, then bisection
    assert all(c["height"] == 512 and c["num_inference_steps"] == 1 for c in spy.calls)
    assert clean.limiter.probed == 5 and clean.limiter.limit == 5


def test_vae_slicing_from_the_configured_batch(spied) -> None:
    run_batch(spied, [_request(seed=s) for s in range(3)])
    run_batch(spied, [_request(seed=s) for s in range(2)])
    assert [(c.batch, c.vae_slicing) for c in spied.calls] == [(3, True), (2, False)]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"steps": 80}, "steps"),
        ({"steps": 0}, "steps"),
        ({"prompt": "  "}, "prompt"),
        ({"width": 100}, "width"),
        ({"seed": -1}, "seed"),
        ({"min_steps": 10, "max_steps": 5, "steps": 7}, "min_steps"),
    ],
    ids=["steps-above-bound", "steps-zero", "empty-subject", "width-not-multiple-of-8", "negative-seed", "bad-bounds"],
)
def test_bad_params_are_422_naming_the_field(clean, params, needle) -> None:
    [out] = run_batch(clean, [_request(**params)])
    assert isinstance(out, InvalidParams) and needle in out.message


def test_prompt_template_takes_the_subject() -> None:
    params = DiffusionParams(prompt_template="studio photo of {prompt}, white background", prompt=" a mug ")
    assert params.full_prompt() == "studio photo of a mug, white background"


def test_text_to_image_refuses_an_image_and_img2img_needs_one(clean) -> None:
    a, b = run_batch(clean, [_request({"image": samples.cat()}), _request(pipeline="img2img")])
    assert isinstance(a, InvalidParams) and isinstance(b, InvalidParams) and "image" in b.message


def test_weight_counts_pixels_times_steps(clean) -> None:
    clean.unit = 512 * 512 * 25
    assert clean.weigh(_request(width=512, height=512, steps=25, max_steps=50)) == 1
    assert clean.weigh(_request(width=1024, height=1024, steps=50, max_steps=50)) == 8
    assert clean.weigh(_request({"image": samples.cat()}, pipeline="img2img", width=1024, height=1024, steps=50)) == 6


def test_canny_edges_are_white_on_black() -> None:
    edges = canny_edges(samples.astronaut(), 100, 200)
    assert edges.shape == (512, 512, 3) and set(np.unique(edges)) == {0, 255}
    assert 0.01 < (edges[:, :, 0] > 0).mean() < 0.5


def test_a_missing_model_folder_fails_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"deployments\.sd\.diffusion\.model.*no model folder"):
        DiffusionModel.load(DiffusionSource(model=str(tmp_path / "absent")), RuntimeOptions(), setting="deployments.sd.diffusion")


def test_a_hub_id_missing_from_the_local_cache_fails_without_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match=r"diffusion\.model.*local hub cache.*stylefleet-test/absent"):
        DiffusionModel.load(DiffusionSource(model="stylefleet-test/absent"), RuntimeOptions(), setting="deployments.sd.diffusion")


def test_a_controlnet_preset_without_a_controlnet_is_503(folders) -> None:
    model = DiffusionModel.load(DiffusionSource(model=str(folders[0])), RuntimeOptions(), setting="deployments.sd.diffusion")
    [out] = run_batch(model, [_request({"image": samples.cat()}, pipeline="controlnet-canny")])
    assert isinstance(out, ModelUnavailable) and "deployments.sd.diffusion.controlnet" in out.message


def test_the_checksum_names_the_weights(sd, folders, tmp_path: Path) -> None:
    assert len(sd.checksum) == 64
    other = DiffusionModel.load(DiffusionSource(model=str(folders[0])), RuntimeOptions())
    assert other.checksum != sd.checksum  # the ControlNet's files are part of the first one's


class Checker(Spy):
    """A pipeline with a stand-in safety checker: flags seed 13 and blacks its image out, as diffusers does."""

    def __call__(self, **kwargs: Any) -> Any:
        out = self.pipe(**kwargs)
        flags = [g.initial_seed() == 13 for g in kwargs["generator"]]
        for i, flagged in enumerate(flags):
            if flagged:
                out.images[i] = np.zeros_like(out.images[i])
        out.nsfw_content_detected = flags
        return out


def test_the_safety_checkers_verdict_reaches_the_encoded_image(clean) -> None:
    from stylefleet.deployments.batching import OutputSpec, encode_outcomes

    originals = dict(clean.pipelines)
    clean.pipelines = {k: Checker(v) for k, v in originals.items()}
    try:
        requests = [ModelRequest({}, {**PRESET, "seed": s}, OutputSpec("png")) for s in (12, 13)]
        clean_one, flagged = encode_outcomes(requests, run_batch(clean, requests), "x")
    finally:
        clean.pipelines = originals
    assert (clean_one.nsfw, flagged.nsfw) == (False, True)  # type: ignore[union-attr]


def test_without_a_safety_checker_the_verdict_is_none(clean) -> None:
    from stylefleet.deployments.batching import OutputSpec, encode_outcomes

    request = ModelRequest({}, {**PRESET, "seed": 13}, OutputSpec("png"))
    [reply] = encode_outcomes([request], run_batch(clean, [request]), "x")
    assert reply.nsfw is None  # type: ignore[union-attr]
