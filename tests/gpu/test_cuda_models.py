"""The models on a real GPU, without Ray: ONNX Runtime really on CUDA, fp16 Stable Diffusion
seeded alone vs batched, the out-of-memory split on a real out-of-memory, memory caps, NVML.

Tolerances here are bounds set before any GPU run (none was available when they were written):
the CPU tier's bound for Stable Diffusion (tests/unit/test_diffusion.py) is at most one level on
under 1% of pixels; fp16 on CUDA picks different kernels for different batch sizes, so the bound
here is looser (``FP16_MAX_LEVELS``, ``FP16_MEAN_LEVELS``). Record what a run measures (the
assertion messages print it) and tighten them to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stylefleet.bench import weights
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.onnx_session import RuntimeOptions, make_session, with_symbolic_batch
from stylefleet.deployments.registry import MODELS, ResolvedModel, resolve
from stylefleet.gpu import Nvml, memory_cap_bytes, torch_memory_fraction
from tests import samples
from tests.gpu.conftest import needs_diffusers

pytestmark = pytest.mark.gpu

CUDA = RuntimeOptions(device="cuda", threads=1)
CPU = RuntimeOptions(device="cpu", threads=2)
FP16_MAX_LEVELS = 8
FP16_MEAN_LEVELS = 0.5
ONNX_KINDS = ["multistyle26", "arbitrary", "u2netp"]
INPUT_SHAPES = {  # one image for each input of the shipped networks (their batch dimension made symbolic)
    "image": (1, 3, 256, 256),
    "style_weights": (26,),
    "style_image": (1, 256, 256, 3),
    "content_image": (1, 384, 384, 3),
    "mobilenet_conv/Conv/BiasAdd": (1, 1, 1, 100),
    "input.1": (1, 3, 320, 320),
}


def _images(outcomes: list[Any]) -> list[np.ndarray]:
    for outcome in outcomes:
        assert isinstance(outcome, np.ndarray), outcome
    return outcomes


def _levels(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    diff = np.abs(a.astype(int) - b.astype(int))
    return int(diff.max()), float(diff.mean())


@pytest.fixture()
def torch_cap():
    """Sets torch's per-process memory fraction for a test and puts it back to the whole card."""
    import torch

    def cap(fraction: float) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(fraction, 0)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    torch.cuda.empty_cache()


# -- ONNX Runtime -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_sessions_run_on_the_cuda_execution_provider(kind: str) -> None:
    from stylefleet.deployments.kinds import KINDS

    for name in KINDS[kind].files:
        session = make_session(with_symbolic_batch(resolve(name).path), CUDA)
        assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_convolutions_execute_on_cuda_not_on_the_cpu(kind: str, tmp_path: Path) -> None:
    """ONNX Runtime's own profile: every Conv node ran on the CUDA provider (no silent CPU fallback per node)."""
    import json

    import onnxruntime as ort

    from stylefleet.deployments.kinds import KINDS

    path = resolve(KINDS[kind].files[-1]).path
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(with_symbolic_batch(path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random(INPUT_SHAPES[i.name], dtype=np.float32) for i in session.get_inputs()}
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    convs = [e for e in events if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == "Conv"]
    assert convs, "the profile lists no Conv node"
    assert {e["args"].get("provider") for e in convs} == {"CUDAExecutionProvider"}


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_models_on_cuda_give_the_cpus_images(kind: str) -> None:
    from stylefleet.deployments.kinds import KINDS

    spec = KINDS[kind]
    images = {"image": samples.astronaut(), "style_image": samples.cat()}
    request = ModelRequest({f: images[f] for f in spec.image_fields}, {})
    files = [resolve(f) for f in spec.files]
    [on_gpu] = _images(run_batch(spec.factory(files, CUDA, {}), [request]))
    [on_cpu] = _images(run_batch(spec.factory(files, CPU, {}), [request]))
    worst, mean = _levels(on_gpu, on_cpu)
    assert worst <= 4 and mean < 0.5, f"CUDA vs CPU: max {worst} levels, mean {mean:.3f}"


def test_onnx_runtime_stops_at_its_memory_cap() -> None:
    """A session capped at 1 GiB fails a call that needs more, instead of growing past its share."""
    path = resolve("multistyle26").path
    capped = make_session(with_symbolic_batch(path), RuntimeOptions(device="cuda", threads=1, gpu_mem_limit_bytes=2**30))
    weights = np.zeros(26, np.float32)
    weights[3] = 1.0
    feeds = {"image": np.random.default_rng(0).random((4, 3, 1024, 1024), dtype=np.float32), "style_weights": weights}
    with pytest.raises(Exception, match="(?i)alloc|memory"):
        capped.run(None, feeds)
    uncapped = make_session(with_symbolic_batch(path), CUDA)
    assert uncapped.run(None, feeds)[0].shape[0] == 4  # the same call fits without the cap


# -- torch: caps, OOM, fp16 ---------------------------------------------------------------------


def test_torch_stops_at_the_shares_cap(torch_cap) -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch_cap(torch_memory_fraction(0.25, total))
    fits = torch.empty(int(total * 0.15), dtype=torch.uint8, device="cuda")
    del fits
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")


def _animegan(tmp_path: Path) -> Any:
    from stylefleet.deployments.animegan import AnimeGANModel

    path = tmp_path / "animegan.pt"
    sha = weights.save_animegan(path)
    return AnimeGANModel(ResolvedModel(MODELS["animeganv2_paprika"], path, sha), CUDA, face_model=False)


def test_a_real_out_of_memory_splits_the_batch_and_every_request_gets_its_image(tmp_path: Path, torch_cap) -> None:
    import torch

    model = _animegan(tmp_path)
    model.limiter.configured = 64
    big = np.asarray(Image.fromarray(samples.astronaut()).resize((1024, 1024)))
    request = ModelRequest({"image": big}, {"face_crop": False, "max_side": 1024})
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    [alone] = _images(run_batch(model, [request]))
    per_image = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch_cap((torch.cuda.memory_reserved() + 3 * per_image) / total)  # 8 at once cannot fit; 2 can
    outcomes = _images(run_batch(model, [request] * 8))
    assert model.limiter.oom_total >= 1, "no out-of-memory happened: the cap did not bite"
    assert model.limiter.limit < 8
    for image in outcomes:
        worst, mean = _levels(image, alone)
        assert worst <= FP16_MAX_LEVELS and mean <= FP16_MEAN_LEVELS, f"max {worst}, mean {mean:.3f}"


@needs_diffusers
@pytest.mark.parametrize(("arch", "side", "steps"), [(weights.TINY, 64, 2), (weights.SD15, 256, 4)], ids=["tiny", "sd15"])
@pytest.mark.parametrize("pipeline", ["text-to-image", "img2img", "controlnet-canny"])
def test_fp16_stable_diffusion_seeded_alone_equals_batched(tmp_path: Path, arch: Any, side: int, steps: int, pipeline: str) -> None:
    from stylefleet.deployments.diffusion import DiffusionModel, assemble_pipelines

    parts = weights.build_sd(arch, tokenizer_dir=tmp_path)
    model = DiffusionModel(assemble_pipelines(parts.pipeline, parts.controlnet, CUDA), checksum="random", device="cuda")
    assert str(next(model.pipelines["text-to-image"].unet.parameters()).dtype) == "torch.float16"
    params = {"pipeline": pipeline, "prompt": "a red bicycle", "steps": steps, "width": side, "height": side, "guidance_scale": 5.0}
    image = {"image": samples.astronaut()} if pipeline != "text-to-image" else {}
    requests = [ModelRequest(image, {**params, "seed": seed}) for seed in (11, 12, 13, 14)]
    [alone] = _images(run_batch(model, requests[:1]))
    batched = _images(run_batch(model, requests))
    if alone.std() < 1:
        pytest.skip(f"{arch.name}: random fp16 weights gave a flat image (overflow), nothing to compare")
    worst, mean = _levels(alone, batched[0])
    message = f"{arch.name} {pipeline} alone vs batched: max {worst} levels, mean {mean:.3f}"
    assert worst <= FP16_MAX_LEVELS and mean <= FP16_MEAN_LEVELS, message
    assert _levels(batched[0], batched[1])[1] > 5 * FP16_MEAN_LEVELS  # other seeds, other images


# -- NVML ---------------------------------------------------------------------------------------


def test_nvml_reads_this_process_memory_and_the_card() -> None:
    import torch

    nvml = Nvml.open()
    assert nvml is not None, "NVML did not open (nvidia-ml-py installed? the gpu extra has it)"
    block = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    reading = nvml.read(os.getpid())
    assert reading.memory_used_bytes >= 512 * 2**20
    assert 0.0 <= reading.utilization_ratio <= 1.0
    assert reading.memory_total_bytes == torch.cuda.get_device_properties(0).total_memory or reading.memory_total_bytes > 0
    assert memory_cap_bytes(0.5, reading.memory_total_bytes) > 0
    del block
