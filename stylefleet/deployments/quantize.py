"""Derived weights: an int8 u2netp made from the shipped fp32 file, reproducibly, and cached.

Nothing is downloaded: ``build(recipe)`` turns the registry's fp32 file into a QDQ int8 network
(ONNX Runtime's static quantization, calibrated on scikit-image's sample photos, which the
package depends on). The recipe is data (``Recipe``): which nodes stay fp32, how activations are
calibrated, on which photos, at which opset. Building it again gives the same bytes: the
calibrator's ranges are rounded to ``Recipe.range_digits`` significant digits before they reach
the quantizer, so float noise between calibration runs (thread scheduling) does not reach the
scales (checked: two builds in fresh processes, the same sha256).

``ensure(name, cache_dir)`` builds a derived file once into a cache folder (``cache_dir()``:
``$STYLEFLEET_MODEL_CACHE``, else the config's ``model_dir``, else ``~/.cache/stylefleet/models``),
atomically, with a JSON record beside it (recipe, source and built checksums, ONNX Runtime
version), and verifies the registry's sha256 whenever it is loaded: a mismatch rebuilds once, and
a build that still differs is refused (``ModelUnavailable``) naming what produced which checksum.

``measure_quality`` compares a derived network's mattes with fp32's on photos that calibration
never saw (the held-out portraits); the registry records its figures, the app spec refuses to
give a derived model most of a style's traffic while they miss the registry's ``GATE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylefleet.deployments.registry import HELD_OUT_PORTRAITS as HELD_OUT_PORTRAITS_LABEL
from stylefleet.deployments.registry import MODELS, Quality, ResolvedModel, file_digest, resolve
from stylefleet.errors import ModelUnavailable

logger = logging.getLogger(__name__)

CACHE_ENV = "STYLEFLEET_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/stylefleet/models")
INPUT = "input.1"  # u2netp's input

# scikit-image's bundled sample photos (no download): each is calibrated as it is, mirrored, and
# cropped to its centre (an eighth off each side), 30 inputs in all.
CALIBRATION_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "cat",
    "retina",
    "colorwheel",
    "stereo_motorcycle",
)


@dataclass(frozen=True)
class Recipe:
    """How a derived int8 network is made from its fp32 source; swapping it is a data change.

    ``exclude``: names of rules in ``EXCLUSION_RULES`` (nodes they pick stay fp32), plus any
    node named in ``exclude_nodes``. ``calibration``: ONNX Runtime's ``CalibrationMethod`` name,
    ``calibration_options`` its extra options (e.g. ``(("percentile", 99.99),)``).
    """

    name: str
    source: str
    opset: int = 13
    exclude: tuple[str, ...] = ("output-heads",)
    exclude_nodes: tuple[str, ...] = ()
    calibration: str = "MinMax"
    calibration_options: tuple[tuple[str, float | bool], ...] = ()
    photos: tuple[str, ...] = CALIBRATION_PHOTOS
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    range_digits: int = 4

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RuleInputs:
    """What an exclusion rule looks at: the pre-processed fp32 graph (an ``onnx.ModelProto``) and
    the calibration feeds, input name -> batch of one (some rules run the fp32 network over them)."""

    model: Any
    feeds: Sequence[dict[str, np.ndarray]] = field(repr=False)


def _output_heads(inputs: RuleInputs) -> list[str]:
    """u2netp's seven output heads, so that no tensor of theirs is quantized: each graph output's
    producer (a Sigmoid), back through any Resize (five side outputs are upsampled) to the Conv that
    makes the side output, and the Concat that fuses the six side outputs for the first head (it
    reads them all: left quantized, it would quantize every side output)."""
    graph = inputs.model.graph
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    for output in graph.output:
        node = producer[output.name]
        names.append(node.name)
        while node.input and node.input[0] in producer and node.op_type != "Conv":
            node = producer[node.input[0]]
            names.append(node.name)
        fuse = producer.get(node.input[0]) if node.op_type == "Conv" else None
        if fuse is not None and fuse.op_type == "Concat":
            names.append(fuse.name)
    return names


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _tap(conv: Any, consumers: Mapping[str, list[Any]]) -> tuple[str, list[str]]:
    """A Conv's output after its Relu (when a Relu is its only consumer), and the Conv with that Relu."""
    after = consumers.get(conv.output[0], [])
    if len(after) == 1 and after[0].op_type == "Relu":
        return after[0].output[0], [conv.name, after[0].name]
    return conv.output[0], [conv.name]


def _with_consumers(graph: Any, convs: Iterable[str]) -> list[str]:
    """Each Conv, its Relu (if that is its only consumer) and every consumer of the Relu's (else
    the Conv's) output: the nodes that read the tensor stay fp32 too, so it is never quantized."""
    consumers = _consumers(graph)
    by_name = {n.name: n for n in graph.node}
    names: list[str] = []
    for conv in convs:
        tensor, nodes = _tap(by_name[conv], consumers)
        names.extend(nodes)
        names.extend(n.name for n in consumers.get(tensor, []))
    return names


def _run_fp32(model: Any, outputs: Sequence[str], feeds: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """The fp32 network over ``feeds`` with ``outputs`` (intermediate tensors) as its answers."""
    import onnx
    import onnxruntime as ort

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    known = {o.name for o in augmented.graph.output}
    for name in outputs:
        if name not in known:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for feed in feeds:
        yield dict(zip(outputs, session.run(list(outputs), feed), strict=True))


LOW_RESOLUTION_FRACTION = 4  # "low-resolution": Convs whose output side is at most the input side / 4


def _low_resolution(inputs: RuleInputs) -> list[str]:
    """Every Conv whose output, for the network's input size, is at most a quarter of its side
    (u2netp: the stages at 80, 40, 20 and 10 px, 8.6% of its FLOPs), with its Relu and that
    tensor's consumers: quantization noise there is amplified by every upsampling after it."""
    graph = inputs.model.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    first = inputs.feeds[0]
    side = max(v.shape[-1] for v in first.values() if v.ndim == 4)
    zeros = {name: np.zeros_like(v) for name, v in first.items()}
    shapes = next(_run_fp32(inputs.model, [c.output[0] for c in convs], [zeros]))
    small = [c.name for c in convs if shapes[c.output[0]].shape[-1] * LOW_RESOLUTION_FRACTION <= side]
    return _with_consumers(graph, small)


NEAR_CONSTANT_RATIO = 5.0  # the dominant channel's maximum over the median channel's
NEAR_CONSTANT_SPREAD = 0.03  # the dominant channel's standard deviation over its maximum


def near_constant_channels(inputs: RuleInputs) -> dict[str, tuple[float, float]]:
    """Conv -> (ratio, spread) of its output after its Relu on the calibration inputs: per channel
    its maximum m_c over every input and pixel, the dominant channel d = argmax m_c, ratio =
    m_d / median m_c, spread = std of channel d's values / m_d."""
    graph = inputs.model.graph
    consumers = _consumers(graph)
    taps = {n.name: _tap(n, consumers)[0] for n in graph.node if n.op_type == "Conv"}
    stats: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    feeds = inputs.feeds
    for outputs in _run_fp32(inputs.model, list(taps.values()), feeds):
        for conv, tensor in taps.items():
            values = outputs[tensor][0].reshape(outputs[tensor].shape[1], -1)
            peak = values.max(axis=1)
            total = values.sum(axis=1, dtype=np.float64)
            squares = np.einsum("ij,ij->i", values, values, dtype=np.float64)
            if conv in stats:
                stats[conv][0] = np.maximum(stats[conv][0], peak)
                stats[conv][1] += total
                stats[conv][2] += squares
            else:
                stats[conv] = [peak, total, squares]
            counts[conv] = counts.get(conv, 0) + values.shape[1]
    out = {}
    for conv, (peak, total, squares) in stats.items():
        d = int(np.argmax(peak))
        median = float(np.median(peak))
        if peak[d] <= 0 or median <= 0:
            continue
        n = counts[conv]
        std = float(np.sqrt(max(0.0, squares[d] / n - (total[d] / n) ** 2)))
        out[conv] = (float(peak[d]) / median, std / float(peak[d]))
    return out


def _near_constant_channels(inputs: RuleInputs) -> list[str]:
    """Convs with one nearly constant channel far above the others (a nearly dead filter whose
    bias dominates): it would set the whole tensor's uint8 range and crush every other channel
    (u2netp: Conv_765, Conv_898, Conv_787). With their Relus and that tensor's consumers."""
    found = near_constant_channels(inputs)
    picked = [c for c, (ratio, spread) in found.items() if ratio > NEAR_CONSTANT_RATIO and spread < NEAR_CONSTANT_SPREAD]
    return _with_consumers(inputs.model.graph, picked)


EXCLUSION_RULES: dict[str, Callable[[RuleInputs], list[str]]] = {
    "output-heads": _output_heads,
    "low-resolution": _low_resolution,
    "near-constant-channels": _near_constant_channels,
}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="u2netp_int8", source="u2netp", exclude=("output-heads", "low-resolution", "near-constant-channels")),
    )
}


def cache_dir(model_dir: str | None = None) -> Path:
    """Where derived files are built: ``$STYLEFLEET_MODEL_CACHE``, the config's ``model_dir``, or ``~/.cache/stylefleet/models``."""
    chosen = os.environ.get(CACHE_ENV) or model_dir
    return Path(chosen).expanduser() if chosen else DEFAULT_CACHE.expanduser()


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


# -- calibration inputs ------------------------------------------------------------------------


def calibration_photo(name: str) -> np.ndarray:
    """One of scikit-image's sample photos as HxWx3 uint8 RGB (``stereo_motorcycle``: its left view)."""
    from skimage import data

    pixels = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.dstack([pixels] * 3)
    return np.ascontiguousarray(pixels[:, :, :3])


def calibration_tensors(photos: Iterable[str]) -> list[np.ndarray]:
    from stylefleet.deployments.background import preprocess

    tensors = []
    for name in photos:
        rgb = calibration_photo(name)
        h, w = rgb.shape[:2]
        for view in (rgb, rgb[:, ::-1], rgb[h // 8 : h - h // 8, w // 8 : w - w // 8]):
            tensors.append(preprocess(np.ascontiguousarray(view)))
    return tensors


# -- the build -----------------------------------------------------------------------------------


def calibration_feeds(photos: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """u2netp's calibration inputs as feeds (``calibration_tensors``, each a batch of one)."""
    return [{INPUT: t[None]} for t in calibration_tensors(photos)]


def excluded_nodes(recipe: Recipe, model: Any, feeds: Sequence[dict[str, np.ndarray]]) -> list[str]:
    """The nodes the recipe keeps fp32, in a stable order: its rules', then ``exclude_nodes``."""
    inputs = RuleInputs(model, feeds)
    names: list[str] = []
    for rule in recipe.exclude:
        names.extend(EXCLUSION_RULES[rule](inputs))
    names.extend(recipe.exclude_nodes)
    return list(dict.fromkeys(names))


def _round_significant(value: np.ndarray, digits: int) -> np.ndarray:
    out = np.array([float(f"{float(v):.{digits}g}") for v in np.ravel(value)], dtype=np.float32)
    return out.reshape(np.shape(value)).astype(np.asarray(value).dtype)


def prepared_source(recipe: Recipe, source: ResolvedModel, workdir: Path) -> Path:
    """The source with a symbolic batch, at the recipe's opset, through ORT's quantization pre-processing."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from stylefleet.deployments.onnx_session import with_symbolic_batch

    converted = version_converter.convert_version(onnx.load_from_string(with_symbolic_batch(source.path)), recipe.opset)
    raw = workdir / "source.onnx"
    raw.write_bytes(converted.SerializeToString())
    pre = workdir / "pre.onnx"
    quant_pre_process(str(raw), str(pre))
    return pre


def build(recipe: Recipe, *, source: ResolvedModel | None = None, feeds: Sequence[dict[str, np.ndarray]] | None = None) -> bytes:
    """The derived network's bytes (20-60 s for u2netp on a shared 2-core machine). Same recipe,
    source and ONNX Runtime: same bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    source = source or resolve(recipe.source)
    calibration = list(feeds) if feeds is not None else calibration_feeds(recipe.photos)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="stylefleet-quantize.") as tmp:
        workdir = Path(tmp)
        pre = prepared_source(recipe, source, workdir)
        calibrator = create_calibrator(
            pre,
            op_types,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=CalibrationMethod[recipe.calibration],
            extra_options=dict(recipe.calibration_options),
        )
        calibrator.collect_data(Reader())
        computed = calibrator.compute_data()
        del calibrator
        ranges = {
            name: (_round_significant(lo, recipe.range_digits), _round_significant(hi, recipe.range_digits))
            for name, (lo, hi) in ((n, d.range_value) for n, d in computed.items())
        }
        model = onnx.load(str(pre))
        quantizer = QDQQuantizer(
            model,
            recipe.per_channel,
            False,  # reduce_range
            QuantType[recipe.weight_type],
            QuantType[recipe.activation_type],
            TensorsData(CalibrationMethod.MinMax, ranges),
            [],  # nodes_to_quantize: all
            excluded_nodes(recipe, model, calibration),
            op_types,
            {},
        )
        quantizer.quantize_model()
        return bytes(quantizer.model.model.SerializeToString())


# -- the cache ---------------------------------------------------------------------------------


def record_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from replicas running as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    seconds: float


def build_into(name: str, folder: Path, *, model_dir: str | None = None) -> Built:
    """Build ``name`` into ``folder`` (temp file, then rename) with its JSON record beside it."""
    recipe = RECIPES[name]
    spec = MODELS[name]
    source = resolve(recipe.source, model_dir=model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("building %s from %s (recipe %s, ONNX Runtime %s) into %s", name, recipe.source, recipe.name, ort_version(), folder)
    data = build(recipe, source=source)
    digest = hashlib.sha256(data).hexdigest()
    target = folder / spec.filename
    _write_atomic(target, data)
    record = {
        "name": name,
        "recipe": recipe.to_json(),
        "source": {"name": recipe.source, "sha256": source.sha256},
        "onnxruntime": ort_version(),
        "sha256": digest,
    }
    _write_atomic(record_path(target), (json.dumps(record, indent=2) + "\n").encode())
    seconds = time.perf_counter() - started
    logger.info("built %s in %.1f s: sha256 %s", name, seconds, digest)
    return Built(target, digest, seconds)


def ensure(name: str, folder: Path, *, model_dir: str | None = None, sha256: str | None = None) -> ResolvedModel:
    """The derived file ``name`` from ``folder``, built there if missing, verified against the
    registry's sha256 (or ``sha256``, pinned in the config); a mismatch rebuilds once."""
    spec = MODELS[name]
    expected = (sha256 or spec.sha256 or "").lower()
    target = folder / spec.filename
    if target.is_file():
        digest = file_digest(target, "sha256")
        if digest == expected:
            return ResolvedModel(spec=spec, path=target, sha256=digest)
        logger.warning("%s at %s has sha256 %s, expected %s: rebuilding it", name, target, digest, expected)
    else:
        logger.info("%s is not in the model cache %s: building it from %s (20-40 s on one core)", name, folder, RECIPES[name].source)
    built = build_into(name, folder, model_dir=model_dir)
    if built.sha256 != expected:
        recipe = RECIPES[name]
        raise ModelUnavailable(
            f"model {name!r}: the build from {recipe.source} with recipe {recipe.to_json()} on ONNX Runtime "
            f"{ort_version()} produced sha256 {built.sha256} ({built.path}), but the registry expects {expected} "
            f"(built with ONNX Runtime {spec.built_with or 'unknown'}). Install that ONNX Runtime version, or, having "
            f"checked the file's quality (stylefleet quantize --check), pin models.{name}.sha256: {built.sha256}"
        )
    return ResolvedModel(spec=spec, path=built.path, sha256=built.sha256)


def check(name: str, folder: Path) -> tuple[Path, str | None]:
    """(the cached file, its sha256 if it matches the registry's, else None), building nothing."""
    spec = MODELS[name]
    target = folder / spec.filename
    if not target.is_file():
        return target, None
    digest = file_digest(target, "sha256")
    return target, digest if digest == spec.sha256 else None


def derived_names() -> list[str]:
    return [name for name, spec in MODELS.items() if spec.derived_from]


# -- quality against fp32 ----------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray = field(repr=False)


def mattes(model_bytes: bytes, photos: Iterable[Photo]) -> dict[str, np.ndarray]:
    """Each photo's uint8 matte through ``model_bytes`` (one thread, batch of one), as served."""
    from stylefleet.deployments.background import postprocess, preprocess
    from stylefleet.deployments.onnx_session import RuntimeOptions, make_session

    session = make_session(model_bytes, RuntimeOptions(threads=1, mem_pattern=False))
    out = {}
    for photo in photos:
        pred = session.run(None, {INPUT: preprocess(photo.rgb)[None]})[0][0, 0]
        out[photo.name] = postprocess(pred, (photo.rgb.shape[1], photo.rgb.shape[0]))
    return out


def metrics(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(IoU of the mattes at 0.5, mean |alpha difference| in 0..1, mean gradient error on the
    reference's edge band): the edge band is where the reference's Sobel gradient exceeds 0.05,
    dilated by a 5x5 square."""
    import cv2

    r = reference.astype(np.float32) / 255
    c = candidate.astype(np.float32) / 255
    a, b = r >= 0.5, c >= 0.5
    union = int((a | b).sum())
    iou = 1.0 if union == 0 else float((a & b).sum()) / union
    mad = float(np.abs(r - c).mean())
    gr = np.hypot(cv2.Sobel(r, cv2.CV_32F, 1, 0), cv2.Sobel(r, cv2.CV_32F, 0, 1))
    gc = np.hypot(cv2.Sobel(c, cv2.CV_32F, 1, 0), cv2.Sobel(c, cv2.CV_32F, 0, 1))
    band = cv2.dilate((gr > 0.05).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    edge = float(np.abs(gr - gc)[band].mean()) if band.any() else 0.0
    return iou, mad, edge


def measure_quality(derived: bytes, source: bytes, photos: Iterable[Photo], *, label: str) -> Quality:
    """The derived network's mattes against the source's on ``photos``, averaged over them."""
    photos = list(photos)
    if not photos:
        raise ValueError("measure_quality needs at least one photo")
    ref = mattes(source, photos)
    got = mattes(derived, photos)
    rows = [metrics(ref[p.name], got[p.name]) for p in photos]
    return Quality(
        iou=round(float(np.mean([r[0] for r in rows])), 4),
        mean_abs_alpha_diff=round(float(np.mean([r[1] for r in rows])), 4),
        edge_error=round(float(np.mean([r[2] for r in rows])), 4),
        worst_iou=round(float(min(r[0] for r in rows)), 4),
        photos=label,
    )


HELD_OUT_PORTRAIT_FILES = ("biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg")


def held_out_portraits(folder: Path) -> list[Photo]:
    """The six portraits ``make portraits`` fetches (never used for calibration)."""
    from PIL import Image

    return [Photo(n, np.asarray(Image.open(folder / n).convert("RGB"))) for n in HELD_OUT_PORTRAIT_FILES]


def source_bytes(name: str, *, model_dir: str | None = None) -> bytes:
    """The fp32 source of derived ``name`` as served (symbolic batch)."""
    from stylefleet.deployments.onnx_session import with_symbolic_batch

    return with_symbolic_batch(resolve(RECIPES[name].source, model_dir=model_dir).path)


def held_out_quality(name: str, derived: bytes, portraits: Path, *, model_dir: str | None = None) -> Quality:
    """Derived ``name``'s figures on the held-out portraits: what its registry entry records."""
    return measure_quality(derived, source_bytes(name, model_dir=model_dir), held_out_portraits(portraits), label=HELD_OUT_PORTRAITS_LABEL)
