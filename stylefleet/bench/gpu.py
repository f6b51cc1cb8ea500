"""``stylefleet bench gpu``: the GPU path measured for every model, in one command.

Two layers, and the output says which ran:

- **model**: ``run_batch`` in this process, no Ray (``stylefleet.bench.table``): per-image
  throughput (batch 1, one call at a time) and bare batches of 1/2/4/8/16, with p50 latency and
  peak GPU memory (torch's allocator, NVML per process) and utilisation.
- **served**: where Ray is installed, the shipped configs (``serve_config.yaml`` with
  ``profiles/gpu.yaml``; ``serve_config.genai.yaml`` with the random-weight models saved to a
  temporary folder) on a loopback-only Ray Serve, loaded over HTTP at concurrency 1/8/32/64:
  images/s, p50/p95, the mean batch, and the card's peak memory and mean utilisation (NVML).

ONNX models run on the CUDA execution provider (a session that falls back to the CPU fails,
never measures the CPU); torch models in fp16. Stable Diffusion 1.5, its ControlNet and
AnimeGANv2 are built at their published sizes with random weights: pictures are noise, the
compute is identical. The summary sets each model's best served throughput against its
per-image one and against the same batch run bare, beside its targets (docs/gpu.md "GPU benchmark").

Without CUDA it refuses, except with ``--tiny``: the whole harness on the CPU at toy sizes
(tiny models, 64 px, 2 steps), writing the same JSON shape, so that CI keeps it from rotting.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from stylefleet.bench import table, weights

# What the figures are held against (docs/gpu.md "GPU benchmark").
ANCHORS = {
    "sd15_512px_50steps_fp16_a100_s_per_image": {"sdpa": 1.6, "torch_compile_channels_last": 1.1},
    "u2netp_320px_1080ti_images_per_s_one_at_a_time": 40,
}
TARGETS: dict[str, Any] = {
    "served_batched_over_per_image": {"onnx": 3.0, "torch-sd": 1.5},
    "served_over_bare_same_batch": 0.9,
}
REQUEST_TIMEOUT_S = 600  # both configs alike: Serve keeps the HTTP options of the first one deployed
SERVED_SUBJECTS = {  # subject -> (application file, style, deployment)
    "stylize": ("onnx", None, "stylize"),
    "restyle": ("onnx", None, "restyle"),
    "remove-background": ("onnx", None, "remove-background"),
    "animeganv2": ("genai", "anime-paprika", "anime-paprika"),
    "sd-text-to-image": ("genai", "product-shot", "diffusion"),
    "sd-img2img": ("genai", "watercolor", "diffusion"),
    "sd-controlnet-canny": ("genai", "catalogue-relight", "diffusion"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model table's flags (it runs that table first) and the served layer's."""
    table.add_arguments(parser, device=False)
    parser.set_defaults(out="bench-results/gpu.json")
    parser.add_argument("--tiny", action="store_true", help="the whole harness on the CPU at toy sizes (CI)")
    parser.add_argument("--layers", default="model,served", help="model, served or both (served needs Ray)")
    parser.add_argument("--concurrency", default=None, help="served concurrency levels (default 1,8,32,64; --tiny 1,4)")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per served level, at least 2x concurrency (default 64; --tiny 8)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per served level")


def cuda_status() -> tuple[bool, str]:
    """(CUDA usable by torch, why not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return True, ""


def ray_missing() -> str | None:
    return None if importlib.util.find_spec("ray") is not None else "Ray not installed: only the model layer was measured"


def machine(device: str) -> dict[str, Any]:
    import onnxruntime

    out: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        out["torch"] = torch.__version__
        if device == "cuda":
            out["cuda"] = torch.version.cuda
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    for name in ("diffusers", "transformers"):
        spec = importlib.util.find_spec(name)
        out[name] = __import__(name).__version__ if spec is not None else None
    return out


# -- the served layer --------------------------------------------------------------------------


def onnx_config(device: str, port: int) -> dict[str, Any]:
    """The shipped serve config, with the GPU profile on CUDA, on a free port."""
    from stylefleet import profiles

    config = profiles.load("serve_config.yaml", "profiles/gpu.yaml" if device == "cuda" else None)
    config["http_options"].update(port=port, request_timeout_s=REQUEST_TIMEOUT_S)
    return config


def genai_config(settings: table.Settings, models_dir: Path, port: int) -> dict[str, Any]:
    """The shipped generative config over random-weight models saved under ``models_dir``; on the
    CPU (``--tiny``) without GPU shares, and the presets at the table's size and steps."""
    cuda = settings.device == "cuda"
    base, controlnet = weights.save_sd(models_dir, settings.arch, half=cuda)
    config = yaml.safe_load(Path("serve_config.genai.yaml").read_text())
    config["http_options"].update(port=port, request_timeout_s=REQUEST_TIMEOUT_S)
    app = config["applications"][0]
    app["name"], app["route_prefix"] = "stylefleet", "/"  # the name the served measurement asks replicas under
    args = app["args"]
    args["jobs"] = {"storage": str(models_dir / "jobs")}  # removed with the models' temporary folder
    for name in list(args["models"]):
        path = models_dir / f"{name}.pt"
        args["models"][name] = {"path": str(path), "sha256": weights.save_animegan(path)}
    for dep in args["deployments"].values():
        dep["device"] = settings.device
        if not cuda:
            dep["num_gpus"] = 0
            dep["threads"] = settings.runtime().intra_op_threads
    args["deployments"]["diffusion"]["diffusion"].update(
        model=str(base), controlnet=str(controlnet), variant=None, safety_checker=False, probe_batch_at_start=cuda
    )
    for style in args["styles"].values():
        params = style.get("params", {})
        if "pipeline" in params:
            params.update(width=settings.size, height=settings.size, min_steps=1, max_steps=max(settings.steps, 1))
            style.setdefault("defaults", {})["steps"] = settings.steps
        elif style.get("deployment") == "anime-paprika":
            style["params"] = {"face_crop": False, "max_side": settings.size}
    return config


def _case(subject: str, config: dict[str, Any], settings: table.Settings) -> Any:
    from stylefleet.bench.common import style_cases
    from stylefleet.bench.load import Case
    from stylefleet.spec import AppSpec

    _, style, deployment = SERVED_SUBJECTS[subject]
    if style is None:
        spec = AppSpec.from_application(config["applications"][0])
        return next(c for c in style_cases(spec) if c.deployment == deployment)
    files = ("image",) if subject in ("animeganv2", "sd-img2img", "sd-controlnet-canny") else ()
    fields = (("prompt", "an astronaut"), ("steps", str(settings.steps))) if subject.startswith("sd-") else ()
    return Case(style=style, deployment=deployment, params={}, files=files, fields=fields)


def served_layer(names: list[str], settings: table.Settings, levels: list[int], requests: int, cap_s: float) -> dict[str, Any]:
    """Each subject over HTTP at each concurrency level, its configs deployed in turn."""
    from stylefleet.bench.common import sample_photos
    from stylefleet.bench.levels import measured_level, print_level
    from stylefleet.tools.local import LocalCluster, free_port

    samples = sample_photos()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"layer": "served (HTTP through the router to the model replicas, Ray Serve)", "url": url, "models": {}}
    cluster = LocalCluster(log_to_driver=False)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="stylefleet-bench-gpu-") as models_dir:
            for app_file in ("onnx", "genai"):
                wanted = [n for n in names if SERVED_SUBJECTS[n][0] == app_file]
                if not wanted:
                    continue
                if app_file == "genai" and (missing := table.diffusers_missing()):
                    for n in wanted:
                        out["models"][n] = {"skipped": missing}
                    continue
                config = onnx_config(settings.device, port) if app_file == "onnx" else genai_config(settings, Path(models_dir), port)
                print(f"== served over HTTP ({url}): the {app_file} config", flush=True)
                cluster.deploy(config, timeout_s=900)
                for name in wanted:
                    case = _case(name, config, settings)
                    rows = []
                    for c in levels:
                        with table.GpuWatch(0.05, whole_card=True) if settings.device == "cuda" else _Null() as watch:
                            row = measured_level(url, case, samples, c, max(requests, 2 * c), cap_s)
                        row.update(watch.summary())
                        rows.append(row)
                        print_level(name, row)
                    out["models"][name] = {"style": case.style, "deployment": case.deployment, "levels": rows}
    finally:
        cluster.stop()
    return out


class _Null:
    """Stands in for GpuWatch on the CPU."""

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


# -- the summary -------------------------------------------------------------------------------


def _bare_at(rows: list[dict[str, Any]], batch: float) -> dict[str, Any] | None:
    """The measured bare row whose batch size is nearest ``batch`` (not above it where possible)."""
    done = [r for r in rows if "images_per_s" in r]
    if not done:
        return None
    below = [r for r in done if r["batch_size"] <= max(1.0, batch)]
    return max(below, key=lambda r: r["batch_size"]) if below else min(done, key=lambda r: r["batch_size"])


def summarise(model_layer: dict[str, Any], served: dict[str, Any] | None) -> dict[str, Any]:
    """Per model: per-image images/s, the best bare batch, the best served level, and the ratios
    against the targets."""
    out: dict[str, Any] = {}
    for name, entry in model_layer["models"].items():
        rows = entry.get("rows", [])
        done = [r for r in rows if "images_per_s" in r]
        one = next((r for r in done if r["batch_size"] == 1), None)
        item: dict[str, Any] = {"per_image_ips": one["images_per_s"] if one else None}
        if done:
            best = max(done, key=lambda r: r["images_per_s"])
            item.update(bare_best_ips=best["images_per_s"], bare_best_batch=best["batch_size"])
        if "skipped" in entry:
            item["skipped"] = entry["skipped"]
        served_entry = (served or {}).get("models", {}).get(name)
        if served_entry and "levels" in served_entry:
            top = max(served_entry["levels"], key=lambda r: r["ips"])
            item.update(served_best_ips=top["ips"], served_best_concurrency=top["concurrency"], served_mean_batch=top["mean_batch_size"])
            if item["per_image_ips"]:
                item["served_over_per_image"] = round(top["ips"] / item["per_image_ips"], 2)
            same = _bare_at(rows, top["mean_batch_size"])
            if same is not None:
                item["served_over_bare_same_batch"] = round(top["ips"] / same["images_per_s"], 2)
                item["bare_same_batch"] = same["batch_size"]
        elif served_entry:
            item["served"] = served_entry.get("skipped")
        family = "onnx" if name in table.ONNX_SUBJECTS else ("torch-sd" if name.startswith("sd-") else "torch")
        target = TARGETS["served_batched_over_per_image"].get(family)
        if target is not None:
            item["target_served_over_per_image"] = target
        item["target_served_over_bare_same_batch"] = TARGETS["served_over_bare_same_batch"]
        out[name] = item
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print("== summary: images/s (per image = batch 1 bare; served = best level)", flush=True)
    for name, s in summary.items():
        if s.get("skipped"):
            print(f"  {name:<20} {s['skipped']}", flush=True)
            continue
        served = (
            f"served {s['served_best_ips']:8.2f} (conc {s['served_best_concurrency']}, mean batch {s['served_mean_batch']})  "
            f"x{s.get('served_over_per_image', '-')} per image (target x{s.get('target_served_over_per_image', '-')})  "
            f"x{s.get('served_over_bare_same_batch', '-')} bare batch {s.get('bare_same_batch', '-')} (target x0.9)"
            if "served_best_ips" in s
            else f"served: {s.get('served', 'not measured')}"
        )
        print(
            f"  {name:<20} per image {s['per_image_ips'] or 0:8.2f}  bare best {s.get('bare_best_ips', 0):8.2f} "
            f"(batch {s.get('bare_best_batch', '-')})  {served}",
            flush=True,
        )


# -- the command -------------------------------------------------------------------------------


def refusal(why: str) -> str:
    return (
        f'stylefleet bench gpu: no CUDA here ({why}). Run it on a CUDA machine (docs/gpu.md "GPU"), '
        "or `stylefleet bench gpu --tiny` to run the whole harness on the CPU at toy sizes."
    )


def main(args: argparse.Namespace) -> int:
    cuda, why = cuda_status()
    if not cuda and not args.tiny:
        print(refusal(why), file=sys.stderr, flush=True)
        return 3
    device = "cpu" if args.tiny else "cuda"
    names = [n for n in args.subjects.split(",") if n]
    unknown = sorted(set(names) - set(table.SUBJECTS))
    if unknown:
        print(f"stylefleet bench: unknown --subjects {unknown}; known: {', '.join(table.SUBJECTS)}", file=sys.stderr)
        return 2
    layers = {x for x in args.layers.split(",") if x}
    settings = table.settings_from(args, device=device, tiny=args.tiny)
    levels = [int(x) for x in (args.concurrency or ("1,4" if args.tiny else "1,8,32,64")).split(",") if x]
    requests = args.requests or (8 if args.tiny else 64)
    started = time.time()
    results: dict[str, Any] = {
        "benchmark": "stylefleet bench gpu" + (" --tiny" if args.tiny else ""),
        "tiny": bool(args.tiny),
        "device": device,
        "weights": f"Stable Diffusion, ControlNet and AnimeGANv2: {weights.weights_note(settings.arch)}",
        "machine": machine(device),
        "anchors": ANCHORS,
        "targets": TARGETS,
        "layers_measured": [],
    }
    if args.tiny:
        results["note"] = "--tiny: the harness on the CPU at toy sizes (tiny models); the figures prove the harness, not the GPU"
    print(
        f"== stylefleet bench gpu{' --tiny' if args.tiny else ''} on {results['machine'].get('gpu', 'the CPU')}; {results['weights']}",
        flush=True,
    )
    model_layer = None
    with tempfile.TemporaryDirectory(prefix="stylefleet-bench-gpu-") as workdir:
        if "model" in layers:
            model_layer = table.run_table(names, settings, Path(workdir))
            results["model_layer"] = model_layer
            results["layers_measured"].append("model")
    served = None
    if "served" in layers:
        missing = ray_missing()
        if missing:
            served = {"skipped": missing}
            print(f"== served layer: {missing}", flush=True)
        else:
            served = served_layer(names, settings, levels, requests, args.seconds)
            results["layers_measured"].append("served")
        results["served_layer"] = served
    if model_layer is not None:
        results["summary"] = summarise(model_layer, served)
        print_summary(results["summary"])
    results["wall_s"] = round(time.time() - started, 1)
    print(f"== layers measured: {', '.join(results['layers_measured']) or 'none'}", flush=True)
    table.write(Path(args.out), results)
    return 0
