"""The model loader: one deployment's ``ModelSpec`` in, its model out, whatever runs it.

A Serve replica (``stylefleet.deployments.serve.serving``), a Ray Data actor (``stylefleet.tools.batch.raydata``) and
the benchmark's bare runs all call ``load_model``, so they load the same files (pinned checksums
verified), with the same options, threads and GPU memory caps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from stylefleet.config import ModelSpec
from stylefleet.deployments import quantize
from stylefleet.deployments.animegan import AnimeGANModel
from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.capabilities import Checksummed
from stylefleet.deployments.diffusion import DiffusionModel
from stylefleet.deployments.faces import HaarFaceModel
from stylefleet.deployments.idphoto import IdPhotoModel
from stylefleet.deployments.kinds import KINDS
from stylefleet.deployments.landmarks import FaceMeshModel
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores
from stylefleet.deployments.registry import MODELS, ResolvedModel, resolve
from stylefleet.deployments.restyle import ArbitraryStyleModel
from stylefleet.deployments.stylize import MultiStyleModel
from stylefleet.gpu import Nvml, memory_cap_bytes, torch_memory_fraction

logger = logging.getLogger(__name__)

# kind -> build(files resolved from the registry, runtime, spec): a BatchModel, or a ComposedModel
Builder = Callable[[list[ResolvedModel], RuntimeOptions, ModelSpec], Any]


def _diffusion(files: list[ResolvedModel], runtime: RuntimeOptions, spec: ModelSpec) -> DiffusionModel:
    if spec.diffusion is None:
        raise ValueError(f"{spec.setting}: needed by model stable-diffusion")
    return DiffusionModel.load(spec.diffusion, runtime, allow_download=spec.allow_download, setting=spec.setting)


def _animegan(face_model: bool) -> Builder:
    return lambda files, runtime, _: AnimeGANModel(files[0], runtime, face_model=face_model)


BUILDERS: dict[str, Builder] = {
    "multistyle26": lambda files, runtime, _: MultiStyleModel(files[0], runtime),
    "arbitrary": lambda files, runtime, _: ArbitraryStyleModel(files[0], files[1], runtime),
    "u2netp": lambda files, runtime, _: U2NetModel(files[0], runtime),
    "haar-face": lambda files, runtime, _: HaarFaceModel(files[0], files[1], runtime),
    "face-mesh": lambda files, runtime, _: FaceMeshModel(files[0], files[1], runtime),
    "id-photo": lambda files, runtime, _: IdPhotoModel(),
    "stable-diffusion": _diffusion,
    "animeganv2_face_paint_512_v2": _animegan(face_model=True),
    "animeganv2_face_paint_512_v1": _animegan(face_model=True),
    "animeganv2_celeba_distill": _animegan(face_model=False),
    "animeganv2_paprika": _animegan(face_model=False),
}


@dataclass
class LoadedModel:
    """A built model and what its runners report: the checksum of its weights, how long it took,
    the runtime it got (GPU caps applied) and NVML where it runs on a GPU."""

    model: Any  # a BatchModel, or a ComposedModel (id-photo)
    model_sha256: str
    load_seconds: float
    runtime: RuntimeOptions
    nvml: Nvml | None = None
    gpu_memory_cap_bytes: int | None = None  # what this replica may take of its card (info())


def runtime_options(spec: ModelSpec) -> RuntimeOptions:
    # Memory patterns as measured for the kind on CPU; a GPU keeps them (not measured there).
    patterns = KINDS[spec.model].memory_patterns or spec.device == "cuda"
    runtime = RuntimeOptions(device=spec.device, threads=spec.threads, mem_pattern=patterns, fp16=spec.precision == "fp16")
    # A session for each call at once: no two calls share an arena (onnx_session's docstring).
    return replace(runtime, lone_call_threads=lone_call_threads(spec, runtime), calls=model_calls(spec, runtime))


def model_calls(spec: ModelSpec, runtime: RuntimeOptions | None = None) -> int:
    """Network calls a replica runs at once: the config's ``model_calls``, or when it leaves
    them open, for an ONNX model on CPU as many ``threads``-thread calls as fit the cores;
    otherwise one (torch keeps its own threads, a GPU its own queue, and OpenCV's cascades are
    not shared between threads)."""
    if spec.model_calls is not None:
        return spec.model_calls
    runtime = runtime or RuntimeOptions(device=spec.device, threads=spec.threads)
    if KINDS[spec.model].parallel_calls and runtime.device == "cpu":
        return max(1, available_cores() // runtime.intra_op_threads)
    return 1


def lone_call_threads(spec: ModelSpec, runtime: RuntimeOptions) -> int | None:
    """Threads of a call that runs while its replica is otherwise idle: the threads of every call
    the replica may run at once (``model_calls`` x ``threads``), at most the cores. ``None`` where
    that is no more than one call's threads, the network is not an ONNX one on CPU, or the config
    says ``lone_call: false``: no second session then."""
    if not spec.lone_call or not KINDS[spec.model].parallel_calls or runtime.device != "cpu":
        return None
    wanted = min(available_cores(), model_calls(spec, runtime) * runtime.intra_op_threads)
    return wanted if wanted > runtime.intra_op_threads else None


def load_model(spec: ModelSpec, *, runtime: RuntimeOptions | None = None) -> LoadedModel:
    """Build the model of ``spec``; a missing or corrupt file raises ModelUnavailable saying how
    to fix it. ``runtime`` replaces the spec's own (the benchmark's session options)."""
    kind = KINDS[spec.model]
    runtime = runtime or runtime_options(spec)
    nvml = Nvml.open(runtime.gpu_device_id) if runtime.device == "cuda" else None
    started = time.perf_counter()
    cap: int | None = None
    if nvml is not None and spec.num_gpus > 0:
        cap = memory_cap_bytes(spec.num_gpus, nvml.total_memory_bytes())
        runtime = _gpu_capped(runtime, spec.num_gpus, nvml, torch=kind.torch)
    files = [resolve_file(spec, name) for name in kind.files_at(spec.precision)]
    model = BUILDERS[kind.name](files, runtime, spec)
    return LoadedModel(model, model_sha256(spec, files, model), time.perf_counter() - started, runtime, nvml, cap)


def resolve_file(spec: ModelSpec, name: str) -> ResolvedModel:
    """A registry file for ``spec``: a derived one (int8) from the model cache, built there first
    when missing or not the registry's build; any other as the registry finds it."""
    pinned = spec.models.get(name)
    if MODELS[name].derived_from:
        return quantize.ensure(
            name, quantize.cache_dir(spec.model_dir), model_dir=spec.model_dir, sha256=pinned.sha256 if pinned else None
        )
    return resolve(
        name,
        path=pinned.path if pinned else None,
        model_dir=spec.model_dir,
        allow_download=spec.allow_download,
        sha256=pinned.sha256 if pinned else None,
    )


def model_sha256(spec: ModelSpec, files: list[ResolvedModel], model: Any) -> str:
    """What a reply names as its weights: the files' checksums; for a composed kind, those the
    deployments it uses are pinned to in the registry, in the order of the kind's roles (not of
    the config's mapping, which a YAML dump may sort); else the model's own (diffusers folders)."""
    if files:
        return "+".join(f.sha256 for f in files)
    if spec.uses:
        return "+".join(KINDS[spec.uses[role].model].expected_sha256(spec.uses[role].precision) for role in KINDS[spec.model].needs)
    return model.checksum if isinstance(model, Checksummed) else ""


def _gpu_capped(runtime: RuntimeOptions, num_gpus: float, nvml: Nvml, *, torch: bool) -> RuntimeOptions:
    """A GPU share caps the model's memory: torch's allocator at that fraction of the card (the
    memory-aware batching then splits a batch that overflows), ONNX Runtime's arena at gpu_mem_limit."""
    if torch:
        # The share less the CUDA context's headroom, as ONNX Runtime's cap: torch's allocator
        # does not count the context, so two replicas at 0.5 could otherwise fill the card.
        fraction = torch_memory_fraction(num_gpus, nvml.total_memory_bytes())
        _cap_torch(fraction, runtime.gpu_device_id)
        logger.info("GPU share %.2f: torch capped at %.3f of the card (the share less the CUDA context's headroom)", num_gpus, fraction)
        return runtime
    cap = memory_cap_bytes(num_gpus, nvml.total_memory_bytes())
    logger.info("GPU share %.2f: ONNX Runtime capped at %.2f GiB", num_gpus, cap / 2**30)
    return replace(runtime, gpu_mem_limit_bytes=cap)


def _cap_torch(fraction: float, device_id: int) -> None:
    import torch  # the torch kinds load it anyway; the ONNX kinds never need it

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction, device_id)
