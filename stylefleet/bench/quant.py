"""``stylefleet bench quant``: int8 against fp32, speed and quality in one run.

Per ONNX network (``--networks``):

- **bare, in turns**: the fp32 and the int8 network with the replica's own session options
  (``make_network`` with the kind's memory patterns, idle threads sleeping), at each batch size
  as one call on every core and "served-like" (one one-thread call per core at once, what a
  replica runs by default), timed A B A B for ``--turns`` turns: each turn's images/s, the
  int8/fp32 ratio per turn and its median.
- **quality on photos calibration never saw**: the six portraits ``make portraits`` fetches
  (plus ``--photos``) through both networks. Mattes (u2netp) are compared with
  ``stylefleet.compare.matte_drift``, images (the stylizers) with ``stylefleet.compare.drift``;
  per photo, mean and worst, and the verdict of the router's own gate (the serve config's
  ``gates``, defaults where it sets none), summed by the router's shadow report so the figures
  and the router agree. A contact sheet (fp32 | int8 | |difference| x4 per photo) is written
  beside the JSON.
- u2netp's int8 file is the registry's (``stylefleet.deployments.quantize.ensure``); a network
  without a shipped recipe is quantized here with the same generic recipe (static QDQ, MinMax
  on scikit-image's photos, fp32 output heads) into a temporary folder removed afterwards.

Then, unless ``--no-served``, the shipped config on a loopback-only Ray Serve: style
``remove-background`` at concurrency 16 forced to ``variant=fp32`` and ``variant=int8`` in
turns (shadows off, so one variant's turn does not run the other), with the mean batch and each
replica's RSS; with ``--rembg PATH``, ``rembg s`` on the same model and photo against the int8
variant. ``--gpu``: fp32, fp16 and int8 on CUDA (refuses without it).

Each network's summary line says whether int8 wins: at least ``FASTER_BY`` times fp32's
served-like rate (median of the turns, at the largest batch) and its quality gate passed.
A benchmark, not a test: it measures and prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from stylefleet.bench.common import ints, machine, rounds_arg, write
from stylefleet.compare import Drift, MatteDrift, drift, matte_drift
from stylefleet.config import Gate, GateSettings

NETWORKS = ("u2netp", "multistyle26", "arbitrary_transform")
KIND_OF = {"u2netp": "u2netp", "multistyle26": "multistyle26", "arbitrary_transform": "arbitrary"}
STYLE_OF = {"u2netp": "remove-background", "multistyle26": "stylize", "arbitrary_transform": "restyle"}
FASTER_BY = 1.05  # int8 wins on speed at this many times fp32's served-like rate or more: less is noise here
SERVED_CONCURRENCY = 16
SERVED_REQUESTS = 96  # six rounds of 16: a steady window of four (stylefleet.bench.load.steady_rate)
STYLIZE_SIDE = 256  # multistyle26 runs at full size: its photos are scaled to this square (speed) or longer side (quality)
STYLE_INDEX = "6"  # the multistyle26 style whose outputs are compared
SPEED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's, as the bare rows' inputs
PANEL_HEIGHT = 160
DIFF_GAIN = 4
GAP_GREY = 128  # between panels: white mattes beside white gaps would run together

T = TypeVar("T")


# -- turns ------------------------------------------------------------------------------------


def alternate(fns: Sequence[Callable[[], T]], turns: int) -> list[list[T]]:
    """Each function once per turn, in order (A B A B ...): ``out[i]`` holds function i's results
    turn by turn. The host's drift over minutes then hits every side alike."""
    if turns < 1 or not fns:
        raise ValueError("alternate needs at least one function and one turn")
    out: list[list[T]] = [[] for _ in fns]
    for _ in range(turns):
        for i, fn in enumerate(fns):
            out[i].append(fn())
    return out


def ratios(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, Any]:
    """candidate/reference per turn (same turn's pair), and their median; None where fp32 gave 0."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("ratios needs the same non-zero number of turns on both sides")
    per_turn = [c / r if r > 0 else None for r, c in zip(reference, candidate, strict=True)]
    valid = [r for r in per_turn if r is not None]
    return {
        "ratios": [None if r is None else round(r, 3) for r in per_turn],
        "median_ratio": round(statistics.median(valid), 3) if valid else None,
    }


# -- the networks -----------------------------------------------------------------------------


Feeds = dict[str, np.ndarray]


@dataclass
class Subject:
    """One network as this benchmark drives it: inputs for a batch of photos, a photo's output
    image (a matte, or an RGB image) from the network's raw output, and how it is judged."""

    name: str
    metric: str  # "matte" or "image"
    feeds: Callable[[list[np.ndarray]], Feeds]  # photos (RGB uint8) -> one call's inputs
    output: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (the photo, its raw output) -> uint8 image
    calibration: Callable[[], list[Feeds]] = field(default=lambda: [])


def _square(rgb: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA))


def _u2netp() -> Subject:
    from stylefleet.deployments.background import postprocess, preprocess

    def feeds(photos: list[np.ndarray]) -> Feeds:
        return {"input.1": np.stack([preprocess(p) for p in photos])}

    def output(photo: np.ndarray, raw: np.ndarray) -> np.ndarray:
        return postprocess(raw[0], (photo.shape[1], photo.shape[0]))

    return Subject("u2netp", "matte", feeds, output)


def _multistyle26() -> Subject:
    from stylefleet.deployments.params import style_weights
    from stylefleet.deployments.quantize import CALIBRATION_PHOTOS, calibration_photo
    from stylefleet.deployments.stylize import to_uint8
    from stylefleet.imageio import resize_to_max_side

    def tensor(rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32) / 255.0
        h, w = x.shape[:2]
        x = np.pad(x, ((0, (-h) % 4), (0, (-w) % 4), (0, 0)), mode="reflect")
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def feeds(photos: list[np.ndarray]) -> Feeds:
        photos = [resize_to_max_side(p, STYLIZE_SIDE) for p in photos]
        if len({p.shape for p in photos}) > 1:  # one call takes one size: a batch of squares
            photos = [_square(p, STYLIZE_SIDE) for p in photos]
        return {"image": np.stack([tensor(p) for p in photos]), "style_weights": style_weights(STYLE_INDEX)}

    def output(photo: np.ndarray, raw: np.ndarray) -> np.ndarray:
        h, w = photo.shape[:2]
        return to_uint8(raw.transpose(1, 2, 0)[:h, :w])

    def calibration() -> list[Feeds]:
        out = []
        for i, name in enumerate(CALIBRATION_PHOTOS):
            rgb = resize_to_max_side(calibration_photo(name), STYLIZE_SIDE)
            for j, view in enumerate((rgb, np.ascontiguousarray(rgb[:, ::-1]))):
                out.append({"image": tensor(view)[None], "style_weights": style_weights(str((2 * i + j) % 26))})
        return out

    return Subject("multistyle26", "image", feeds, output, calibration)


def _arbitrary_transform() -> Subject:
    from PIL import Image

    from stylefleet.deployments.onnx_session import RuntimeOptions, make_session, with_symbolic_batch
    from stylefleet.deployments.quantize import CALIBRATION_PHOTOS, calibration_photo
    from stylefleet.deployments.registry import resolve
    from stylefleet.deployments.restyle import STYLE_SIDE, TRANSFORM_SIDE, _square_style_input
    from stylefleet.deployments.stylize import to_uint8

    predict = make_session(with_symbolic_batch(resolve("arbitrary_predict").path), RuntimeOptions(threads=None, mem_pattern=False))
    predict_input = predict.get_inputs()[0].name
    assert predict.get_inputs()[0].shape[1] == STYLE_SIDE

    def vector(style_rgb: np.ndarray) -> np.ndarray:
        return np.asarray(predict.run(None, {predict_input: _square_style_input(style_rgb)[None]})[0][0], dtype=np.float32)

    from skimage import data

    style = vector(np.ascontiguousarray(data.chelsea()))  # the cat as the style picture, as the bare rows use it

    def content(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        h, w = rgb.shape[:2]
        scale = TRANSFORM_SIDE / max(h, w)
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(Image.fromarray(rgb, "RGB").resize((sw, sh), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        return np.pad(small, ((0, TRANSFORM_SIDE - sh), (0, TRANSFORM_SIDE - sw), (0, 0)), mode="reflect"), (sh, sw)

    def feeds(photos: list[np.ndarray]) -> Feeds:
        return {"content_image": np.stack([content(p)[0] for p in photos]), "mobilenet_conv/Conv/BiasAdd": np.stack([style] * len(photos))}

    def output(photo: np.ndarray, raw: np.ndarray) -> np.ndarray:
        sh, sw = content(photo)[1]
        return to_uint8(raw[:sh, :sw])

    def calibration() -> list[Feeds]:
        photos = [calibration_photo(n) for n in CALIBRATION_PHOTOS]
        styles = [vector(p) for p in photos]
        # each photo with another photo's style vector: the transform sees many styles, as served
        return [
            {"content_image": content(p)[0][None], "mobilenet_conv/Conv/BiasAdd": styles[(i + 3) % len(styles)][None]}
            for i, p in enumerate(photos)
        ]

    return Subject("arbitrary_transform", "image", feeds, output, calibration)


SUBJECTS: dict[str, Callable[[], Subject]] = {"u2netp": _u2netp, "multistyle26": _multistyle26, "arbitrary_transform": _arbitrary_transform}


def fp32_bytes(name: str) -> bytes:
    from stylefleet.deployments.onnx_session import with_symbolic_batch
    from stylefleet.deployments.registry import resolve

    return with_symbolic_batch(resolve(name).path)


def recipe_for(name: str) -> Any:
    """The shipped recipe for ``name``'s int8 file, or the generic one (u2netp's) at the network's own opset."""
    import onnx

    from stylefleet.deployments.quantize import RECIPES, Recipe
    from stylefleet.deployments.registry import resolve

    shipped = next((r for r in RECIPES.values() if r.source == name), None)
    if shipped is not None:
        return shipped
    opset = max(o.version for o in onnx.load(str(resolve(name).path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    # The shipped u2netp recipe's rules, applied to this network.
    rules = RECIPES["u2netp_int8"].exclude
    return Recipe(name=f"{name}_int8", source=name, opset=max(13, opset), exclude=rules)


def already_quantized(name: str) -> str:
    """A note where the fp32 file already holds quantization nodes (a TFLite int8 export does)."""
    import onnx

    from stylefleet.deployments.registry import resolve

    ops = [n.op_type for n in onnx.load(str(resolve(name).path), load_external_data=False).graph.node]
    count = sum(op in ("QuantizeLinear", "DequantizeLinear") for op in ops)
    return f" (the source already holds {count} QuantizeLinear/DequantizeLinear nodes of its {len(ops)})" if count else ""


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for what this run builds; removed with everything in it afterwards."""
    with tempfile.TemporaryDirectory(prefix="stylefleet-bench-quant.") as tmp:
        yield Path(tmp)


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    """``folder`` as the working directory for the block (``contextlib.chdir`` on Python 3.11+)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def int8_bytes(subject: Subject, workdir: Path) -> tuple[bytes, str]:
    """(the int8 network, where it came from): the registry's file for a shipped recipe, else built in ``workdir``."""
    from stylefleet.deployments import quantize
    from stylefleet.deployments.onnx_session import with_symbolic_batch
    from stylefleet.errors import ModelUnavailable

    recipe = recipe_for(subject.name)
    if recipe.name in quantize.RECIPES:
        try:
            resolved = quantize.ensure(recipe.name, quantize.cache_dir())
            return with_symbolic_batch(resolved.path), f"registry {recipe.name} ({resolved.path})"
        except ModelUnavailable as exc:
            print(f"  ({exc}; built here instead)", flush=True)
            return quantize.build(recipe), f"recipe {recipe.name}, built here (not the registry's checksum)"
    t0 = time.perf_counter()
    with inside(workdir):  # ONNX Runtime's shape inference may leave a stray .data file in the cwd
        data = quantize.build(recipe, feeds=subject.calibration())
    return data, f"generic recipe {recipe.name} (opset {recipe.opset}), built here in {time.perf_counter() - t0:.0f} s"


# -- bare speed -------------------------------------------------------------------------------


class Setup:
    """One session setup of one network, timed on demand: ``calls`` calls at once on ``threads`` each."""

    def __init__(self, model: bytes, mem_pattern: bool, threads: int, calls: int, feeds: Feeds, device: str = "cpu") -> None:
        from stylefleet.deployments.onnx_session import RuntimeOptions, make_network

        options = RuntimeOptions(device=device, threads=threads, mem_pattern=mem_pattern, calls=calls)  # type: ignore[arg-type]
        self._network = make_network(model, options)
        self._feeds, self._calls = feeds, calls
        self.images_per_call = calls * len(next(iter(feeds.values())))
        self._pool = ThreadPoolExecutor(calls)

    def call(self) -> None:
        from stylefleet.deployments.onnx_session import run

        list(self._pool.map(lambda _: run(self._network, self._feeds), range(self._calls)))

    def rate(self, seconds: float) -> float:
        """Images/s over whole calls (at least two) for about ``seconds``, after one untimed call."""
        self.call()
        calls, t0 = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - t0 < seconds:
            self.call()
            calls += 1
        return calls * self.images_per_call / (time.perf_counter() - t0)

    def close(self) -> None:
        self._pool.shutdown()
        del self._network


def setups(batch_sizes: Sequence[int], cores: int) -> list[tuple[str, int, int, int]]:
    """(label, batch, threads, calls): one call on every core, and served-like (one one-thread call per core)."""
    out = []
    for b in batch_sizes:
        out.append((f"batch {b}, one call on {cores} threads", b, cores, 1))
        out.append((f"batch {b}, served-like: {cores} one-thread calls", b, 1, cores))
    return out


def bare_turns(
    subject: Subject,
    models: dict[str, bytes],
    photos: list[np.ndarray],
    batch_sizes: Sequence[int],
    turns: int,
    seconds: float,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Each setup's images/s per model, the models in turns; ratios against the first model (fp32)."""
    from stylefleet.deployments.kinds import KINDS
    from stylefleet.deployments.onnx_session import available_cores

    cores = available_cores() if device == "cpu" else 1
    mem_pattern = KINDS[KIND_OF[subject.name]].memory_patterns or device == "cuda"
    rows = []
    names = list(models)
    for label, batch, threads, calls in setups(batch_sizes, cores) if device == "cpu" else [(f"batch {b}", b, 1, 1) for b in batch_sizes]:
        feeds = subject.feeds([photos[i % len(photos)] for i in range(batch)])
        built = [Setup(models[n], mem_pattern, threads, calls, feeds, device) for n in names]
        try:
            rates = alternate([lambda s=s: s.rate(seconds) for s in built], turns)  # type: ignore[misc]
        finally:
            for s in built:
                s.close()
        row: dict[str, Any] = {"setup": label, "batch_size": batch, "threads": threads, "calls": calls, "served_like": calls > 1}
        for n, r in zip(names, rates, strict=True):
            row[f"{n}_ips"] = [round(x, 2) for x in r]
        for n, r in zip(names[1:], rates[1:], strict=True):
            row[f"{n}_over_{names[0]}"] = ratios(rates[0], r)
        rows.append(row)
        text = "  ".join(f"{n} {', '.join(f'{x:.2f}' for x in r)}" for n, r in zip(names, rates, strict=True))
        summary = "  ".join(f"{n}/{names[0]} {row[f'{n}_over_{names[0]}']['median_ratio']}" for n in names[1:])
        print(f"  bare {subject.name:<20} {label:<40} img/s per turn: {text}  => median {summary}", flush=True)
    return rows


def speed_ratio(rows: list[dict[str, Any]], key: str = "int8_over_fp32") -> float | None:
    """The verdict's speed figure: the served-like setup's median ratio at the largest batch
    (what a replica runs); the largest batch's one-call setup where there is no served-like row."""
    if not rows:
        return None
    top = max(r["batch_size"] for r in rows)
    at_top = [r for r in rows if r["batch_size"] == top]
    chosen = next((r for r in at_top if r["served_like"]), at_top[0])
    return chosen.get(key, {}).get("median_ratio")


# -- quality ----------------------------------------------------------------------------------


def outputs(subject: Subject, model: bytes, photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each photo's output through ``model``, one call per photo on one thread (as served)."""
    from stylefleet.deployments.kinds import KINDS
    from stylefleet.deployments.onnx_session import RuntimeOptions, make_session

    session = make_session(model, RuntimeOptions(threads=1, mem_pattern=KINDS[KIND_OF[subject.name]].memory_patterns))
    out = {}
    for name, rgb in photos.items():
        shown = rgb if subject.metric == "matte" else _shown(subject, rgb)
        raw = session.run(None, subject.feeds([shown]))[0][0]
        out[name] = subject.output(shown, raw)
    return out


def _shown(subject: Subject, rgb: np.ndarray) -> np.ndarray:
    """The photo as the image network sees it: multistyle26 at ``STYLIZE_SIDE`` on the longer side."""
    from stylefleet.imageio import resize_to_max_side

    return resize_to_max_side(rgb, STYLIZE_SIDE) if subject.name == "multistyle26" else rgb


def comparisons(metric: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, Drift | MatteDrift]:
    compare = matte_drift if metric == "matte" else drift
    return {name: compare(reference[name], candidate[name]) for name in reference}


def quality_table(metric: str, per_photo: dict[str, Drift | MatteDrift], gate: Gate) -> dict[str, Any]:
    """Per photo, mean and worst of ``per_photo``, and the gate's verdict on the means as the
    router reaches it (its shadow report's sums, ``failing``): pass or fail, and what failed."""
    from stylefleet.router.shadow import ShadowReport

    report = ShadowReport()
    key = ("bench", "fp32", "int8", metric)
    for comparison in per_photo.values():
        report.add(("bench", "fp32", "int8"), comparison)
    sums = report.sums[key]  # type: ignore[index]
    failing = sums.failing(gate)
    rows = {name: {k: _round(v) for k, v in vars(d).items()} for name, d in per_photo.items()}
    figures = {k: _round(v) for k, v in sums.figures().items()}
    thresholds = (gate.matte if metric == "matte" else gate.image).model_dump()
    worst: dict[str, float]
    if metric == "matte":
        mattes = [d for d in per_photo.values() if isinstance(d, MatteDrift)]
        worst = {
            "iou": min(d.iou for d in mattes),
            "mean_abs_alpha_diff": max(d.mean_abs_alpha_diff for d in mattes),
            "edge_error": max(d.edge_error for d in mattes),
        }
    else:
        images = [d for d in per_photo.values() if isinstance(d, Drift)]
        worst = {"psnr_db": min(d.psnr_db for d in images), "ssim": min(d.ssim for d in images)}
    return {
        "metric": metric,
        "photos": rows,
        "means": figures,
        "worst": {k: _round(v) for k, v in worst.items()},
        "gate": {"thresholds": thresholds, "failing": failing, "verdict": "fail" if failing else "pass"},
    }


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and np.isfinite(value) else value


def contact_sheet(rows: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, height: int = PANEL_HEIGHT) -> Path:
    """One row per photo: fp32 output | int8 output | |difference| x``DIFF_GAIN``, each scaled to
    ``height`` px, written as a PNG at ``path``."""
    import cv2
    from PIL import Image

    def rgb(img: np.ndarray) -> np.ndarray:
        img = np.dstack([img] * 3) if img.ndim == 2 else img[:, :, :3]
        h, w = img.shape[:2]
        return cv2.resize(np.ascontiguousarray(img), (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)

    strips = []
    for ref, got in rows.values():
        diff = np.clip(np.abs(ref.astype(np.int16) - got.astype(np.int16)) * DIFF_GAIN, 0, 255).astype(np.uint8)
        gap = np.full((height, 4, 3), GAP_GREY, np.uint8)
        strips.append(np.hstack([rgb(ref), gap, rgb(got), gap, rgb(diff)]))
    width = max(s.shape[1] for s in strips)
    sheet = np.vstack([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=GAP_GREY) for s in strips])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def quality(subject: Subject, fp32: bytes, int8: bytes, photos: dict[str, np.ndarray], gate: Gate, sheet: Path) -> dict[str, Any]:
    ref, got = outputs(subject, fp32, photos), outputs(subject, int8, photos)
    table = quality_table(subject.metric, comparisons(subject.metric, ref, got), gate)
    table["contact_sheet"] = str(contact_sheet({n: (ref[n], got[n]) for n in photos}, sheet))
    for name, row in table["photos"].items():
        print(f"  quality {subject.name:<20} {name:<26} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    print(
        f"  quality {subject.name:<20} mean {table['means']}  worst {table['worst']}  gate {table['gate']['verdict']}"
        f"{' (failing ' + ', '.join(table['gate']['failing']) + ')' if table['gate']['failing'] else ''}; sheet {sheet}",
        flush=True,
    )
    return table


def held_out_photos(portraits: Path, extra: Path | None) -> dict[str, np.ndarray]:
    """The six portraits (never calibrated on) and every JPEG/PNG in ``extra``."""
    from PIL import Image

    from stylefleet.deployments.quantize import HELD_OUT_PORTRAIT_FILES

    missing = [n for n in HELD_OUT_PORTRAIT_FILES if not (portraits / n).is_file()]
    if missing:
        raise SystemExit(f"stylefleet bench quant: {portraits} lacks {', '.join(missing)}: run `make portraits` or pass --portraits")
    files = [portraits / n for n in HELD_OUT_PORTRAIT_FILES]
    if extra is not None:
        files += sorted(p for p in extra.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in files}


def speed_photos() -> list[np.ndarray]:
    from stylefleet.deployments.quantize import calibration_photo

    return [calibration_photo(n) for n in SPEED_PHOTOS]


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    network: str
    wins: bool
    line: str


def verdict(network: str, speed: float | None, table: dict[str, Any] | None, error: str | None = None) -> Verdict:
    """Whether int8 wins for ``network``: at least ``FASTER_BY`` times fp32 AND its gate passed; the line says why, with figures."""
    if error is not None:
        return Verdict(network, False, f"{network}: int8 does not win: {error}")
    faster = speed is not None and speed >= FASTER_BY
    passes = table is not None and table["gate"]["verdict"] == "pass"
    speed_text = f"{speed:.2f}x fp32 served-like" if speed is not None else "speed not measured"
    speed_text += "" if faster else f" (needs {FASTER_BY:.2f}x)"
    if table is None:
        gate_text = "quality not measured"
    else:
        means = ", ".join(f"{k} {v}" for k, v in table["means"].items() if v is not None and k not in ("identical",))
        failing = table["gate"]["failing"]
        gate_text = f"gate {'passes' if passes else 'fails on ' + ', '.join(failing)} ({means})"
    wins = faster and passes
    return Verdict(network, wins, f"{network}: int8 {'WINS' if wins else 'does not win'}: {speed_text}; {gate_text}")


# -- served -----------------------------------------------------------------------------------


def served_cases(spec: Any) -> tuple[Any, Any]:
    """remove-background forced to variant fp32 and to variant int8 (``Case`` with the form field)."""
    from stylefleet.bench.load import Case

    style = spec.args.styles.get("remove-background")
    variants = {v.name: v.deployment for v in style.variant_list()} if style is not None else {}
    if not {"fp32", "int8"} <= set(variants):
        raise SystemExit(
            "stylefleet bench quant: the config's style remove-background has no variants fp32 and int8 (--no-served skips this)"
        )
    return tuple(  # type: ignore[return-value]
        Case(style="remove-background", deployment=variants[v], params={}, files=("image",), fields=(("variant", v),))
        for v in ("fp32", "int8")
    )


def replica_setup(spec: Any, deployment: str) -> dict[str, Any]:
    """How the config runs ``deployment``'s replica: network calls at once, threads per call, the
    lone-call session's threads."""
    from stylefleet.deployments.loader import runtime_options

    runtime = runtime_options(spec.model_spec(deployment))
    return {"model_calls": runtime.calls, "threads": runtime.intra_op_threads, "lone_call_threads": runtime.lone_call_threads}


def without_shadows(document: dict[str, Any]) -> dict[str, Any]:
    """The config with the router's shadow shares emptied: a forced fp32 turn must not also run int8."""
    config = copy.deepcopy(document)
    for entry in config["applications"][0].get("deployments", []):
        if "shadows" in (entry.get("user_config") or {}):
            entry["user_config"]["shadows"] = {}
    return config


SETUP_KNOBS = ("model_calls", "threads", "lone_call")


def int8_like_fp32(document: dict[str, Any], spec: Any, fp32: str, int8: str) -> dict[str, Any]:
    """The config with the int8 deployment given the fp32 one's replica setup (network calls,
    threads, lone-call session) and memory budget: the shipped int8 variant is a shadow with one
    call at a time, and the turns compare the networks as they run once weight moves to int8."""
    config = copy.deepcopy(document)
    deployments = config["applications"][0]["args"]["deployments"]
    for knob in SETUP_KNOBS:
        if knob in deployments[fp32]:
            deployments[int8][knob] = deployments[fp32][knob]
        else:
            deployments[int8].pop(knob, None)
    deployments[int8]["memory_budget_bytes"] = spec.memory_budget_of(fp32)
    return config


def _served_text(row: dict[str, Any]) -> str:
    from stylefleet.bench.levels import saturated_ips

    rss = [r["rss_mib"] for r in row.get("rss", [])]
    return f"{saturated_ips(row):6.2f} img/s (mean batch {row['mean_batch_size']}, replica RSS {rss} MiB)"


def served(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped config served on loopback; remove-background fp32 vs int8 in turns, then rembg s."""
    from stylefleet.bench import rembg
    from stylefleet.bench.common import sample_photos
    from stylefleet.bench.levels import measured_level, saturated_ips, served_level
    from stylefleet.spec import check_document, load_serve_file
    from stylefleet.tools.local import LocalCluster, choose_ingress, free_port

    serve_file = load_serve_file(args.config)
    fp32, int8 = served_cases(serve_file.app)
    config = without_shadows(serve_file.document)
    if not args.as_shipped:
        config = int8_like_fp32(config, serve_file.app, fp32.deployment, int8.deployment)
    port = free_port()
    config["http_options"]["port"] = port
    ingress = choose_ingress("auto", serve_file.direct_ingress_blocker())
    samples = sample_photos()
    cluster = LocalCluster(log_to_driver=False, http_port=port, ingress=ingress)
    cluster.start()
    out: dict[str, Any] = {"concurrency": SERVED_CONCURRENCY, "ingress": ingress}
    try:
        cluster.deploy(config)
        url = f"http://127.0.0.1:{port}"
        print(f"== served ({url}): remove-background, variant fp32 vs int8 at concurrency {SERVED_CONCURRENCY}, in turns", flush=True)
        for case in (fp32, int8):  # untimed: both replicas' arenas grow to this concurrency's batches
            asyncio.run(served_level(url, case, samples, SERVED_CONCURRENCY, 2 * SERVED_CONCURRENCY, 120))

        def level(case: Any) -> Callable[[], dict[str, Any]]:
            return lambda: measured_level(url, case, samples, SERVED_CONCURRENCY, SERVED_REQUESTS, max(60.0, 6 * args.seconds))

        deployed = check_document(config).app
        out["replicas"] = {c.deployment: replica_setup(deployed, c.deployment) for c in (fp32, int8)}
        how = "as shipped" if args.as_shipped else "int8 given fp32's (--as-shipped: as shipped)"
        print(f"  replica setups, {how}: {out['replicas']}", flush=True)
        rows = alternate([level(fp32), level(int8)], args.turns)
        for turn, (a, b) in enumerate(zip(*rows, strict=True)):
            print(f"  turn {turn + 1}: fp32 {_served_text(a)}  int8 {_served_text(b)}", flush=True)
        out["fp32"], out["int8"] = rows
        out["int8_over_fp32"] = ratios([saturated_ips(r) for r in rows[0]], [saturated_ips(r) for r in rows[1]])
        print(
            f"  => served int8/fp32 {out['int8_over_fp32']['ratios']} per turn, median {out['int8_over_fp32']['median_ratio']}", flush=True
        )
        if args.rembg:
            out["int8_vs_rembg"] = rembg.compare(args.rembg, url, int8, samples, args.turns, max(60.0, 6 * args.seconds))
    finally:
        cluster.stop()
    return out


# -- GPU --------------------------------------------------------------------------------------


def has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def gpu_models(fp32: bytes, int8: bytes) -> dict[str, bytes]:
    """fp32, fp16 (ONNX Runtime's converter, inputs and outputs kept fp32) and int8, in that order."""
    from stylefleet.deployments.onnx_session import to_fp16

    return {"fp32": fp32, "fp16": to_fp16(fp32), "int8": int8}


# -- the mode ---------------------------------------------------------------------------------


def networks_arg(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown network(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(NETWORKS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--networks", type=networks_arg, default=list(NETWORKS), help=f"comma-separated, of {', '.join(NETWORKS)} (default: all)"
    )
    parser.add_argument(
        "--turns", type=rounds_arg, default=3, help="fp32/int8 turns (A B A B ...) of every bare setup and of the served load"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each side of one bare turn is timed")
    parser.add_argument("--batch-sizes", default="1,4", help="batch sizes of the bare setups")
    parser.add_argument("--portraits", type=Path, default=Path(".portraits"), help="the held-out portraits (`make portraits`)")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of further held-out photos (JPEG/PNG) for the quality table")
    parser.add_argument("--config", default="serve_config.yaml", help="the serve config: its gates, and what --served deploys")
    parser.add_argument("--no-served", dest="served", action="store_false", help="skip the served fp32/int8 turns (no Ray)")
    parser.add_argument(
        "--as-shipped", action="store_true", help="serve int8 as the config ships it, not with fp32's replica setup and budget"
    )
    parser.add_argument("--rembg", default=None, help="a `rembg` executable: also int8 served against `rembg s` (stylefleet bench rembg)")
    parser.add_argument("--gpu", action="store_true", help="fp32, fp16 and int8 bare on CUDA instead (exits 2 without CUDA)")
    parser.add_argument("--out", default="bench-results/quant.json", help="the JSON; contact sheets are written beside it")


def gates(config: str) -> GateSettings:
    """The router's gates as the serve config sets them (its defaults where the file is absent)."""
    from stylefleet.spec import load_serve_file

    path = Path(config)
    return load_serve_file(path).app.traffic.gates if path.is_file() else GateSettings()


def main(args: argparse.Namespace) -> int:
    if args.gpu and not has_cuda():
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        print(f"stylefleet bench quant --gpu: ONNX Runtime has no CUDAExecutionProvider here ({providers}); nothing measured")
        return 2
    out = Path(args.out)
    settings = gates(args.config)
    photos = held_out_photos(args.portraits, args.photos)
    results: dict[str, Any] = {"machine": machine(), "config": args.config, "turns": args.turns, "seconds": args.seconds, "networks": {}}
    device = "cuda" if args.gpu else "cpu"
    print(
        f"== int8 vs fp32 ({device}), {args.turns} turn(s) of {args.seconds:g} s per side; quality on {len(photos)} held-out photos",
        flush=True,
    )
    verdicts = []
    for name in args.networks:
        entry: dict[str, Any] = results["networks"].setdefault(name, {})
        with scratch() as tmp:
            try:
                subject = SUBJECTS[name]()
                fp32 = fp32_bytes(name)
                with inside(tmp):  # ONNX Runtime's shape inference drops its external-data files in the cwd when it fails
                    int8, entry["int8_source"] = int8_bytes(subject, tmp)
                print(f"  {name}: int8 from {entry['int8_source']}", flush=True)
            except Exception as exc:  # a network the generic recipe cannot quantize is a finding, not a crash
                entry["error"] = f"{type(exc).__name__}: {exc}{already_quantized(name)}"
                verdicts.append(verdict(name, None, None, f"quantization failed ({entry['error'][:200]})"))
                print(f"  {verdicts[-1].line}", flush=True)
                continue
            models = gpu_models(fp32, int8) if args.gpu else {"fp32": fp32, "int8": int8}
            entry["bare"] = bare_turns(subject, models, speed_photos(), ints(args.batch_sizes), args.turns, args.seconds, device)
            gate = settings.for_style(STYLE_OF[name])
            sheet = out.with_name(f"{out.stem}-{name}.png")
            entry["quality"] = quality(subject, fp32, int8, photos, gate, sheet)
        v = verdict(name, speed_ratio(entry["bare"]), entry["quality"])
        verdicts.append(v)
    if args.served and not args.gpu:
        results["served"] = served(args)
    results["summary"] = [{"network": v.network, "wins": v.wins, "line": v.line} for v in verdicts]
    print("== summary (the shipped config changes only for a network that wins)", flush=True)
    for v in verdicts:
        print(f"  {v.line}", flush=True)
    write(out, results)
    return 0
