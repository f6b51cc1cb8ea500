"""``stylefleet bench models``: the model layer's throughput table, per model and batch size.

For each model (the ONNX ones: stylize, restyle, remove-background; AnimeGANv2; Stable
Diffusion text-to-image, img2img and ControlNet) and each batch size: images/s, p50 latency of
one batch call, and the peak memory of the process while that batch size ran. The layer measured
is ``run_batch`` (prepare, the network call, finish: what a replica's batch runs, without the
image decode and encode), in this process, with no Ray.

Peak memory: on the CPU the kernel's resident high-water mark (``VmHWM``), reset before each
batch size through ``/proc/self/clear_refs`` so that each row has its own peak, weights
included; on CUDA also torch's allocator peak (torch models) and the process's GPU memory as
NVML reports it, sampled every 20 ms (ONNX Runtime's CUDA arena is outside torch's count).

The torch models are built at their published size with random weights
(``stylefleet.bench.weights``): no download. A benchmark, not a test: it asserts nothing, and
every loop is bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylefleet.bench import weights
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.onnx_session import RuntimeOptions, available_cores
from stylefleet.errors import StylefleetError

logger = logging.getLogger(__name__)

ONNX_SUBJECTS = ("stylize", "restyle", "remove-background")
TORCH_SUBJECTS = ("animeganv2", "sd-text-to-image", "sd-img2img", "sd-controlnet-canny")
SUBJECTS = ONNX_SUBJECTS + TORCH_SUBJECTS
SD_STRENGTH = 0.75  # img2img runs this share of the steps
PROMPT = "a photo of an astronaut in a white suit, studio light, high detail"


@dataclass(frozen=True)
class Settings:
    """What the table runs: where, at what sizes, how many calls per row."""

    device: str = "cpu"
    size: int = 512  # side of the square input (stylize, AnimeGANv2) and of the SD output
    steps: int = 25  # Stable Diffusion denoising steps
    arch: weights.SdArch = weights.SD15
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    repeats: int = 3  # timed calls per row (after one warm-up call)
    row_seconds: float = 60.0  # no new timed call starts after this (at least one runs)
    threads: int | None = None  # CPU threads (default: every core this process may use)

    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(device=self.device, threads=self.threads or available_cores())  # type: ignore[arg-type]


@dataclass
class Subject:
    """One model under measurement: how to build it and the i-th request of a batch."""

    name: str
    model: str
    family: str  # "onnx" or "torch"
    build: Callable[[], Any]  # a BatchModel
    request: Callable[[int], ModelRequest]
    work: str  # what one image is, in words (size, steps)
    random_weights: bool = False
    notes: list[str] = field(default_factory=list)


def photos(size: int) -> tuple[dict[str, np.ndarray], str]:
    """(the photo at size x size and the style image, where they come from). scikit-image's
    astronaut and cat where installed; otherwise drawn here (the compute does not depend on them)."""
    from PIL import Image

    try:
        from skimage import data

        photo, style, source = data.astronaut(), data.chelsea(), "scikit-image astronaut and cat"
    except ImportError:
        y, x = np.mgrid[0:512, 0:512]
        photo = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
        style = np.ascontiguousarray(photo[::-1, :, ::-1])
        source = "a drawn gradient (scikit-image not installed)"
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).resize((size, size), Image.Resampling.LANCZOS))
    return {"image": np.ascontiguousarray(resized), "style_image": np.ascontiguousarray(style)}, source


def _onnx_model(kind_name: str, runtime: RuntimeOptions) -> Any:
    """The shipped network through the one model loader (checksums verified), on ``runtime``."""
    from stylefleet.config import ModelSpec
    from stylefleet.deployments.loader import load_model

    return load_model(ModelSpec(deployment=f"bench-{kind_name}", model=kind_name), runtime=runtime).model


def _animegan_model(runtime: RuntimeOptions, folder: Path) -> Any:
    """AnimeGANv2 at its real size with random weights, saved and pinned, through the loader."""
    from stylefleet.config import ModelSource, ModelSpec
    from stylefleet.deployments.loader import load_model

    path = folder / "animeganv2-random.pt"
    sha256 = weights.save_animegan(path)
    spec = ModelSpec(
        deployment="bench-animeganv2",
        model="animeganv2_paprika",
        models={"animeganv2_paprika": ModelSource(path=str(path), sha256=sha256)},
    )
    return load_model(spec, runtime=runtime).model


def _sd_model(settings: Settings) -> Any:
    from stylefleet.deployments.diffusion import DiffusionModel, assemble_pipelines

    parts = weights.build_sd(settings.arch)
    runtime = settings.runtime()
    pipelines = assemble_pipelines(parts.pipeline, parts.controlnet, runtime)
    return DiffusionModel(pipelines, checksum=f"random-{settings.arch.name}", device=settings.device)


def diffusers_missing() -> str | None:
    """Why the Stable Diffusion rows cannot run here, or None."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return "skipped: diffusers not installed"
    return None


def subjects(names: Sequence[str], settings: Settings, workdir: Path) -> list[Subject]:
    """The models to measure, in table order; the SD ones share one model (three pipelines over one set of modules)."""
    images, _ = photos(settings.size)
    runtime = settings.runtime()
    size, steps = settings.size, settings.steps
    shared: dict[str, Any] = {}

    def sd() -> Any:
        if "sd" not in shared:
            shared["sd"] = _sd_model(settings)
        return shared["sd"]

    def sd_request(pipeline: str, with_image: bool) -> Callable[[int], ModelRequest]:
        params = {
            "pipeline": pipeline, "prompt": PROMPT, "steps": steps, "min_steps": 1, "max_steps": 200,
            "width": size, "height": size, "guidance_scale": 7.5, "strength": SD_STRENGTH,
        }
        return lambda i: ModelRequest({"image": images["image"]} if with_image else {}, {**params, "seed": i})

    img2img_steps = int(steps * SD_STRENGTH)
    table: dict[str, Subject] = {
        "stylize": Subject(
            "stylize", "multistyle26", "onnx", lambda: _onnx_model("multistyle26", runtime),
            lambda i: ModelRequest({"image": images["image"]}, {"style": str(i % 26), "max_side": size}),
            f"{size}x{size}",
        ),
        "restyle": Subject(
            "restyle", "arbitrary", "onnx", lambda: _onnx_model("arbitrary", runtime),
            lambda i: ModelRequest({"image": images["image"], "style_image": images["style_image"]}, {}),
            "384x384 network (fixed), style at 256",
        ),
        "remove-background": Subject(
            "remove-background", "u2netp", "onnx", lambda: _onnx_model("u2netp", runtime),
            lambda i: ModelRequest({"image": images["image"]}, {}),
            f"320x320 network (fixed), cutout at {size}",
        ),
        "animeganv2": Subject(
            "animeganv2", "animeganv2 generator", "torch", lambda: _animegan_model(runtime, workdir),
            lambda i: ModelRequest({"image": images["image"]}, {"face_crop": False, "max_side": size}),
            f"{size}x{size}", random_weights=True,
        ),
        "sd-text-to-image": Subject(
            "sd-text-to-image", f"stable-diffusion ({settings.arch.name})", "torch", sd, sd_request("text-to-image", False),
            f"{size}x{size}, {steps} steps, CFG", random_weights=True,
        ),
        "sd-img2img": Subject(
            "sd-img2img", f"stable-diffusion ({settings.arch.name})", "torch", sd, sd_request("img2img", True),
            f"{size}x{size}, {img2img_steps} of {steps} steps (strength {SD_STRENGTH}), CFG", random_weights=True,
        ),
        "sd-controlnet-canny": Subject(
            "sd-controlnet-canny", f"stable-diffusion + controlnet ({settings.arch.name})", "torch", sd,
            sd_request("controlnet-canny", True), f"{size}x{size}, {steps} steps, CFG", random_weights=True,
        ),
    }
    return [table[n] for n in names]


# -- peak memory -------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        found = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark to the current RSS (Linux 4.0+); False if it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def peak_rss_bytes() -> int:
    """The resident high-water mark since the last reset (or since the process started)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the lifetime peak
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


class GpuWatch:
    """NVML every ``interval_s`` on a thread: the peak GPU memory of this process (``whole_card``:
    of every process on the card, e.g. served replicas) and the card's mean utilisation."""

    def __init__(self, interval_s: float = 0.02, *, whole_card: bool = False) -> None:
        from stylefleet.gpu import Nvml

        self._nvml = Nvml.open()
        self._interval_s = interval_s
        self._whole_card = whole_card
        self._stop = threading.Event()
        self.peak_bytes = 0
        self.utilisation: list[float] = []
        self._thread = threading.Thread(target=self._run, name="stylefleet-bench-nvml", daemon=True)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def __enter__(self) -> GpuWatch:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        assert self._nvml is not None
        pid = os.getpid()
        while not self._stop.wait(self._interval_s):
            if self._whole_card:
                used, busy = self._nvml.device_memory_used_bytes(), self._nvml.utilization_ratio()
            else:
                reading = self._nvml.read(pid)
                used, busy = reading.memory_used_bytes, reading.utilization_ratio
            self.peak_bytes = max(self.peak_bytes, used)
            self.utilisation.append(busy)

    def summary(self) -> dict[str, Any]:
        if not self.available:
            return {}
        mean = round(statistics.fmean(self.utilisation), 3) if self.utilisation else None
        return {"gpu_peak_mib": round(self.peak_bytes / 2**20, 1), "gpu_utilisation": mean}


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, Any]]:
    """Fills the yielded dict, on exit, with this span's peak memory (module docstring)."""
    out: dict[str, Any] = {}
    reset = reset_peak_rss()
    cuda = device == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    watch = GpuWatch() if cuda else None
    try:
        if watch is not None:
            with watch:
                yield out
        else:
            yield out
    finally:
        out["peak_rss_mib"] = round(peak_rss_bytes() / 2**20, 1)
        out["peak_rss_method"] = "VmHWM, reset before this batch size" if reset else "ru_maxrss (process lifetime)"
        if cuda:
            import torch

            out["torch_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            out["torch_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        if watch is not None:
            out.update(watch.summary())


# -- one row -----------------------------------------------------------------------------------


def _out_of_memory(exc: BaseException) -> bool:
    from stylefleet.deployments.memory import is_out_of_memory

    return isinstance(exc, MemoryError) or is_out_of_memory(exc)


def _lift_batch_limit(model: Any) -> int:
    """The torch models chunk a batch under their limiter's limit (8 by default): the table runs the
    batch it names, so the limit goes up; a real out-of-memory still halves (and is reported)."""
    limiter = getattr(model, "limiter", None)
    if limiter is None:
        return 0
    limiter.configured = 1 << 20
    return int(limiter.oom_total)


def measure_row(subject: Subject, model: Any, batch_size: int, settings: Settings) -> dict[str, Any]:
    """One warm-up call, then up to ``repeats`` timed calls of ``batch_size`` requests."""
    requests = [subject.request(i) for i in range(batch_size)]
    ooms_before = _lift_batch_limit(model)
    row: dict[str, Any] = {"batch_size": batch_size}
    times: list[float] = []
    with peak_memory(settings.device) as memory:
        try:
            _check(run_batch(model, requests))
            deadline = time.monotonic() + settings.row_seconds
            for _ in range(settings.repeats):
                started = time.perf_counter()
                _check(run_batch(model, requests))
                times.append(time.perf_counter() - started)
                if time.monotonic() > deadline:
                    break
        except Exception as exc:  # noqa: BLE001 - one row fails, the table goes on
            row["skipped"] = "out of memory" if _out_of_memory(exc) else f"failed: {exc}"
    row.update(memory)
    if "skipped" in row:
        return row
    p50 = statistics.median(times)
    row.update(
        calls=len(times),
        images_per_s=round(batch_size / p50, 3),
        p50_ms=round(p50 * 1000, 1),
    )
    limiter = getattr(model, "limiter", None)
    if limiter is not None and limiter.oom_total > ooms_before:
        row["note"] = f"ran out of memory {limiter.oom_total - ooms_before}x: split in halves and retried"
    return row


def _check(outcomes: Sequence[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, StylefleetError):
            raise RuntimeError(f"{outcome.code}: {outcome}")


def measure_subject(subject: Subject, settings: Settings) -> dict[str, Any]:
    """Build the model (timed), then one row per batch size, smallest first; sizes after an
    out-of-memory are skipped (a larger batch would not fit either)."""
    result: dict[str, Any] = {"model": subject.model, "family": subject.family, "work": subject.work, "rows": []}
    if subject.random_weights:
        result["weights"] = weights.NOTE if subject.name == "animeganv2" else weights.weights_note(settings.arch)
    if subject.name.startswith("sd-") and (missing := diffusers_missing()):
        result["skipped"] = missing
        return result
    started = time.perf_counter()
    try:
        model = subject.build()
    except Exception as exc:  # noqa: BLE001 - a model that cannot be built is a skipped row, said so
        result["skipped"] = f"could not build: {type(exc).__name__}: {exc}"
        return result
    result["build_s"] = round(time.perf_counter() - started, 1)
    for b in settings.batch_sizes:
        if result["rows"] and result["rows"][-1].get("skipped") == "out of memory":
            result["rows"].append({"batch_size": b, "skipped": "out of memory at a smaller batch"})
            continue
        row = measure_row(subject, model, b, settings)
        result["rows"].append(row)
        print(format_row(subject.name, row), flush=True)
    return result


def format_row(name: str, row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"  {name:<20} batch {row['batch_size']:>2}: {row['skipped']}"
    gpu = f"  GPU {row['gpu_peak_mib']:8.0f} MiB" if row.get("gpu_peak_mib") is not None else ""
    torch_peak = f"  torch {row['torch_peak_reserved_mib']:8.0f} MiB" if "torch_peak_reserved_mib" in row else ""
    return (
        f"  {name:<20} batch {row['batch_size']:>2}: {row['images_per_s']:8.3f} img/s  p50 {row['p50_ms']:9.1f} ms  "
        f"peak RSS {row['peak_rss_mib']:7.0f} MiB{torch_peak}{gpu}  ({row['calls']} timed calls)"
        f"{'  ' + row['note'] if 'note' in row else ''}"
    )


def markdown(results: dict[str, Any]) -> str:
    """The table as README markdown."""
    gpu = results["settings"]["device"] == "cuda"
    head = "| model | work per image | batch | images/s | p50 latency | peak RSS |" + (" peak GPU memory |" if gpu else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, entry in results["models"].items():
        if "skipped" in entry:
            lines.append(f"| {name} | {entry['work']} | | {entry['skipped']} | | |" + (" |" if gpu else ""))
            continue
        for row in entry["rows"]:
            if "skipped" in row:
                lines.append(f"| {name} | {entry['work']} | {row['batch_size']} | {row['skipped']} | | |" + (" |" if gpu else ""))
                continue
            mem = f" {row.get('gpu_peak_mib', row.get('torch_peak_reserved_mib', ''))} MiB |" if gpu else ""
            lines.append(
                f"| {name} | {entry['work']} | {row['batch_size']} | {row['images_per_s']:.3g} | "
                f"{row['p50_ms'] / 1000:.3g} s | {row['peak_rss_mib']:.0f} MiB |{mem}"
            )
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """The flags of ``stylefleet bench models`` (and of ``gpu``, which runs the same table first; it picks its own device)."""
    parser.add_argument("--out", default="bench-results/models.json")
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help=f"which models, of {','.join(SUBJECTS)}")
    parser.add_argument("--batch-sizes", default=None, help="default 1,2,4,8,16 (--tiny: 1,2)")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512; --tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="Stable Diffusion steps (default 25; --tiny 2)")
    parser.add_argument(
        "--sd-arch", choices=sorted(weights.ARCHS), default=None, help="Stable Diffusion size (default sd15; --tiny: tiny)"
    )
    if device:
        parser.add_argument(
            "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (auto: CUDA where torch sees it)"
        )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row, after one warm-up call")
    parser.add_argument("--row-seconds", type=float, default=60.0, help="no new timed call after this")
    parser.add_argument("--threads", type=int, default=None, help="ONNX threads on the CPU (default: every core)")


def settings_from(args: argparse.Namespace, *, device: str = "cpu", tiny: bool = False) -> Settings:
    default_sizes = "1,2" if tiny else "1,2,4,8,16"
    return Settings(
        device=device,
        size=args.size or (64 if tiny else 512),
        steps=args.steps or (2 if tiny else 25),
        arch=weights.ARCHS[args.sd_arch or ("tiny" if tiny else "sd15")],
        batch_sizes=tuple(int(x) for x in (args.batch_sizes or default_sizes).split(",") if x),
        repeats=args.repeats,
        row_seconds=args.row_seconds,
        threads=args.threads,
    )


def run_table(names: Sequence[str], settings: Settings, workdir: Path, out: Path | None = None) -> dict[str, Any]:
    """Every subject's rows, with what was measured and how, ready for JSON."""
    _, photo_source = photos(settings.size)
    cpu_note = "" if settings.device == "cuda" else f"; on the CPU ({settings.runtime().intra_op_threads} threads)"
    print(
        f"== model layer (run_batch in this process, no Ray): {settings.size} px, SD {settings.arch.name} at "
        f"{settings.steps} steps{cpu_note}; the torch models have {weights.weights_note(settings.arch)}",
        flush=True,
    )
    results: dict[str, Any] = {
        "layer": "model (run_batch: prepare, network, finish; no decode/encode; no Ray)",
        "settings": {
            "device": settings.device,
            "size": settings.size,
            "steps": settings.steps,
            "sd_arch": settings.arch.name,
            "batch_sizes": list(settings.batch_sizes),
            "repeats": settings.repeats,
            "threads": settings.runtime().intra_op_threads if settings.device == "cpu" else None,
            "dtype_torch": "float16" if settings.device == "cuda" else "float32",
            "photos": photo_source,
        },
        "memory": "peak RSS: kernel VmHWM reset before each batch size (weights included); "
        "CUDA: torch allocator peak and NVML per-process peak sampled every 20 ms",
        "models": {},
    }
    for subject in subjects(names, settings, workdir):
        entry = measure_subject(subject, settings)
        if "skipped" in entry:
            print(f"  {subject.name:<20} {entry['skipped']}", flush=True)
        results["models"][subject.name] = entry
        if out is not None:  # after each model: a long run stopped part-way keeps what it measured
            write(out, results, quiet=True)
    return results


def write(out: Path, results: dict[str, Any], *, quiet: bool = False) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if not quiet:
        print(f"wrote {out}", flush=True)


def main(args: argparse.Namespace) -> int:
    """``stylefleet bench models``: on the CPU unless CUDA is there and asked for (``--device``)."""
    import tempfile

    names = [n for n in args.subjects.split(",") if n]
    unknown = sorted(set(names) - set(SUBJECTS))
    if unknown:
        print(f"stylefleet bench: unknown --subjects {unknown}; known: {', '.join(SUBJECTS)}")
        return 2
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = settings_from(args, device=device)
    with tempfile.TemporaryDirectory(prefix="stylefleet-bench-models-") as workdir:
        results = run_table(names, settings, Path(workdir), Path(args.out))
    print(markdown(results), flush=True)
    write(Path(args.out), results)
    return 0
