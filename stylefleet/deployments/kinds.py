"""The model kinds a deployment can serve: their task, params, files and inputs, as data.

A kind with ``needs`` is composed: its deployment loads no weights, it calls the deployments
that the config names for each role (``deployments.<name>.uses``) through deployment handles.

Data only (params models and registry entries, no ONNX Runtime or torch): the app spec checks a
config against this table without loading a runtime. How each kind's model is built is
``stylefleet.deployments.loader``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from stylefleet.deployments.admission import MemoryCost
from stylefleet.deployments.params import (
    AnimeParams,
    DiffusionParams,
    FaceDetectParams,
    FaceMeshParams,
    IdPhotoParams,
    RemoveBackgroundParams,
    RestyleParams,
    StylizeParams,
)
from stylefleet.deployments.registry import MODELS, derived_file

GIB = 2**30


@dataclass(frozen=True)
class ModelKind:
    """What a model takes and does.

    ``variant_param``: a param every style of this kind must fix, which decides the style's task
    and input files (``variants``: value -> (task, image fields)); Stable Diffusion's
    ``pipeline``. ``client_params``: where set, the only params a client may send; the preset
    fixes the rest. ``seeded``: requests carry a ``seed`` and may ask for ``n`` images.
    """

    name: str
    task: str
    params_model: type[BaseModel]
    files: tuple[str, ...]
    image_fields: tuple[str, ...]
    needs: Mapping[str, str] = field(default_factory=dict)  # role -> task of the deployment playing it
    returns_image: bool = True  # False: its answer is data for other deployments (no style may use it)
    variant_param: str | None = None
    variants: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    client_params: frozenset[str] | None = None
    seeded: bool = False
    torch: bool = False  # runs on torch, not ONNX Runtime: a GPU share caps torch's allocator instead
    # The default pixel budget per batch (docs/batching.md "Pixel budget"): most image pixels, after
    # max_side, that one batch may hold; None: no budget (Stable Diffusion weighs its requests).
    max_batch_pixels: int | None = None
    # Its network may run several calls at once from several threads (ONNX Runtime sessions may):
    # a replica's model_calls then defaults to the cores over its threads.
    parallel_calls: bool = False
    # ONNX Runtime's per-shape memory plans, chosen per network by measurement (stylefleet/bench/arena.py,
    # docs/performance.md "Memory flat by design"): off, multistyle26 ran faster in less than half the memory.
    memory_patterns: bool = True
    # What one request costs a replica in memory by its output pixels, measured
    # (``python -m stylefleet.tools.chaos per-pixel``, docs/batching.md "Memory"); None: no
    # admission by memory (composed and generative kinds).
    memory: MemoryCost | None = None
    # A replica's default memory_budget_bytes (docs/batching.md "Memory"): the idle model plus the
    # requests it admits, and Ray's ``memory`` resource for the actor. Sized so that the shipped
    # app's deployments, Ray's own processes and the router fit a 24 GiB machine with room.
    # None (the kinds with no ``memory``): no budget unless the config sets one.
    memory_budget_bytes: int | None = None
    # Its networks run on ONNX Runtime: they may be converted to fp16 at load (precision: fp16).
    onnx: bool = False

    @property
    def composed(self) -> bool:
        return bool(self.needs)

    def precisions(self) -> tuple[str, ...]:
        """The ``precision`` values a deployment of this kind may ask for: fp32; int8 where the
        registry has an int8 file derived from each of its files; fp16 for ONNX networks."""
        out = ["fp32"]
        if self.files and all(derived_file(f, "int8") for f in self.files):
            out.append("int8")
        if self.onnx:
            out.append("fp16")
        return tuple(out)

    def files_at(self, precision: str) -> tuple[str, ...]:
        """The registry files a deployment at ``precision`` loads (fp16 converts the fp32 files at load)."""
        if precision != "int8":
            return self.files
        derived = [derived_file(f, "int8") for f in self.files]
        return tuple(d.name for d in derived if d is not None)

    def expected_sha256(self, precision: str = "fp32") -> str:
        """The registry's checksums of this kind's files at ``precision`` (each verified when a replica loads it)."""
        return "+".join(MODELS[f].sha256 or "unpinned" for f in self.files_at(precision))

    def client_params_given(self, fixed: set[str]) -> set[str]:
        """Params a client may send to a style that fixes ``fixed``: the kind's (all, or its
        ``client_params``) less the fixed ones."""
        names = set(self.params_model.model_fields)
        if self.client_params is not None:
            names &= self.client_params
        return names - fixed

    def shape(self, fixed_params: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """(task, image fields) of a style of this kind with these fixed params."""
        if self.variant_param is None:
            return self.task, self.image_fields
        return self.variants[fixed_params[self.variant_param]]


# Peak RSS growth of one request (decode, prepare, network, finish, PNG encode) over the loaded
# model, fitted as a fixed part plus a part per output pixel above the sizes measured
# (``python -m stylefleet.tools.chaos per-pixel``; docs/batching.md "Memory", 2-core x86 CPU):
# multistyle26 runs its network at full size (601-678 B/px at 1-8 MP); arbitrary and u2netp run
# fixed-size networks and pay per pixel only around them (u2netp's alpha matting, the costliest
# shipped preset, adds a fixed part: its solve runs at a capped size).
MULTISTYLE26_COST = MemoryCost(bytes_per_pixel=700.0)
ARBITRARY_COST = MemoryCost(bytes_per_pixel=16.0, fixed_bytes=64 * 2**20)
U2NETP_COST = MemoryCost(bytes_per_pixel=16.0, fixed_bytes=64 * 2**20, fixed_bytes_with=("alpha_matting", 576 * 2**20))
HAAR_FACE_COST = MemoryCost(bytes_per_pixel=20.0, fixed_bytes=16 * 2**20)
# face-mesh: 22, 61 and 233 MiB at 1, 4 and 16.8 MP (13.9-21.1 B/px: the decoded photo and its
# letterboxed copies; the networks run at 192 px): Haar's fit covers it.
FACE_MESH_COST = HAAR_FACE_COST


def _animegan(name: str) -> ModelKind:
    return ModelKind(
        name=name,
        task="anime",
        params_model=AnimeParams,
        files=(name,),
        image_fields=("image",),
        torch=True,
        max_batch_pixels=8 * 512 * 512,
    )


KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            name="multistyle26",
            task="stylize",
            params_model=StylizeParams,
            files=("multistyle26",),
            image_fields=("image",),
            parallel_calls=True,
            onnx=True,
            memory_patterns=False,
            max_batch_pixels=8 * 512 * 512,  # the network runs at full size: ~0.6 GiB of arena per megapixel
            memory=MULTISTYLE26_COST,
            memory_budget_bytes=6 * GIB,
        ),
        ModelKind(
            name="arbitrary",
            task="restyle",
            params_model=RestyleParams,
            files=("arbitrary_predict", "arbitrary_transform"),
            image_fields=("image", "style_image"),
            parallel_calls=True,
            onnx=True,
            memory_patterns=False,
            max_batch_pixels=8 * 1024 * 1024,  # fixed 384 px network; the budget bounds pre/post-processing
            memory=ARBITRARY_COST,
            memory_budget_bytes=2 * GIB,
        ),
        ModelKind(
            name="u2netp",
            task="remove-background",
            params_model=RemoveBackgroundParams,
            files=("u2netp",),
            image_fields=("image",),
            parallel_calls=True,
            onnx=True,
            # Off: the replica idles at about 2.4 GiB instead of 4.1-4.8 GiB (its three sessions'
            # per-shape plans), for 0.87x of the throughput at concurrency (docs/batching.md "Memory").
            memory_patterns=False,
            max_batch_pixels=8 * 2048 * 2048,  # fixed 320 px network; the budget bounds pre/post-processing
            memory=U2NETP_COST,
            memory_budget_bytes=4 * GIB,
        ),
        ModelKind(
            name="haar-face",
            task="detect-faces",
            params_model=FaceDetectParams,
            files=("haarcascade_frontalface_default", "haarcascade_profileface"),
            image_fields=("image",),
            returns_image=False,
            max_batch_pixels=8 * 2048 * 2048,
            memory=HAAR_FACE_COST,
            memory_budget_bytes=3 * GIB // 2,
        ),
        ModelKind(
            name="face-mesh",
            task="detect-faces",
            params_model=FaceMeshParams,
            files=("blazeface_full_range", "face_mesh"),
            image_fields=("image",),
            returns_image=False,
            max_batch_pixels=8 * 2048 * 2048,  # fixed 192 px networks; the budget bounds the letterboxing
            memory=FACE_MESH_COST,
            memory_budget_bytes=3 * GIB // 2,
        ),
        ModelKind(
            name="id-photo",
            task="id-photo",
            params_model=IdPhotoParams,
            files=(),
            image_fields=("image",),
            needs={"matte": "remove-background", "faces": "detect-faces"},
            max_batch_pixels=8 * 2048 * 2048,
        ),
        ModelKind(
            name="stable-diffusion",
            task="text-to-image",
            params_model=DiffusionParams,
            files=(),
            image_fields=(),
            variant_param="pipeline",
            variants={
                "text-to-image": ("text-to-image", ()),
                "img2img": ("img2img", ("image",)),
                "controlnet-canny": ("controlnet-canny", ("image",)),
            },
            client_params=frozenset({"prompt", "seed", "steps", "negative_prompt"}),  # a preset fixing negative_prompt keeps it
            seeded=True,
            torch=True,
        ),
        _animegan("animeganv2_face_paint_512_v2"),
        _animegan("animeganv2_face_paint_512_v1"),
        _animegan("animeganv2_celeba_distill"),
        _animegan("animeganv2_paprika"),
    )
}
