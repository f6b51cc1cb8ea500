"""The model kinds a deployment can serve: their task, params, files and inputs, as data.

A kind with ``needs`` is composed: its deployment loads no weights, it calls the deployments
that the config names for each role (``deployments.<name>.uses``) through deployment handles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from deployments.animegan import AnimeGANModel, AnimeParams
from deployments.background import RemoveBackgroundParams, U2NetModel
from deployments.diffusion import DiffusionModel, DiffusionParams
from deployments.faces import FaceDetectParams, HaarFaceModel
from deployments.idphoto import IdPhotoModel, IdPhotoParams
from deployments.onnx_session import RuntimeOptions
from deployments.registry import MODELS, ResolvedModel
from deployments.restyle import ArbitraryStyleModel, RestyleParams
from deployments.stylize import MultiStyleModel, StylizeParams
from stylefleet.config import DiffusionSource

# factory(files resolved from the registry, runtime, kind-specific options from the config)
Factory = Callable[[list[ResolvedModel], RuntimeOptions, Mapping[str, Any]], Any]  # a BatchModel, or a ComposedModel


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
    factory: Factory  # a BatchModel, or a ComposedModel
    needs: Mapping[str, str] = field(default_factory=dict)  # role -> task of the deployment playing it
    returns_image: bool = True  # False: its answer is data for other deployments (no style may use it)
    variant_param: str | None = None
    variants: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    client_params: frozenset[str] | None = None
    seeded: bool = False
    torch: bool = False  # runs on torch, not ONNX Runtime: a GPU share caps torch's allocator instead
    # The default pixel budget per batch (README "Pixel budget"): most image pixels, after
    # max_side, that one batch may hold; None: no budget (Stable Diffusion weighs its requests).
    max_batch_pixels: int | None = None
    # Its network may run several calls at once from several threads (ONNX Runtime sessions may):
    # a replica's model_calls then defaults to the cores over its threads.
    parallel_calls: bool = False

    @property
    def composed(self) -> bool:
        return bool(self.needs)

    def expected_sha256(self) -> str:
        """The registry's checksums of this kind's files (each verified when a replica loads it)."""
        return "+".join(MODELS[f].sha256 or "unpinned" for f in self.files)

    def shape(self, fixed_params: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """(task, image fields) of a style of this kind with these fixed params."""
        if self.variant_param is None:
            return self.task, self.image_fields
        return self.variants[fixed_params[self.variant_param]]


def _diffusion(files: list[ResolvedModel], runtime: RuntimeOptions, options: Mapping[str, Any]) -> DiffusionModel:
    return DiffusionModel.load(
        DiffusionSource.model_validate(options["diffusion"]),
        runtime,
        allow_download=bool(options.get("allow_download", False)),
        setting=str(options.get("setting", "diffusion")),
    )


def _animegan(name: str, face_model: bool) -> ModelKind:
    return ModelKind(
        name=name,
        task="anime",
        params_model=AnimeParams,
        files=(name,),
        image_fields=("image",),
        factory=lambda files, rt, _: AnimeGANModel(files[0], rt, face_model=face_model),
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
            factory=lambda files, rt, _: MultiStyleModel(files[0], rt),
            parallel_calls=True,
            max_batch_pixels=8 * 512 * 512,  # the network runs at full size: ~1.1 GiB of arena per megapixel
        ),
        ModelKind(
            name="arbitrary",
            task="restyle",
            params_model=RestyleParams,
            files=("arbitrary_predict", "arbitrary_transform"),
            image_fields=("image", "style_image"),
            factory=lambda files, rt, _: ArbitraryStyleModel(files[0], files[1], rt),
            parallel_calls=True,
            max_batch_pixels=8 * 1024 * 1024,  # fixed 384 px network; the budget bounds pre/post-processing
        ),
        ModelKind(
            name="u2netp",
            task="remove-background",
            params_model=RemoveBackgroundParams,
            files=("u2netp",),
            image_fields=("image",),
            factory=lambda files, rt, _: U2NetModel(files[0], rt),
            parallel_calls=True,
            max_batch_pixels=8 * 2048 * 2048,  # fixed 320 px network; the budget bounds pre/post-processing
        ),
        ModelKind(
            name="haar-face",
            task="detect-faces",
            params_model=FaceDetectParams,
            files=("haarcascade_frontalface_default", "haarcascade_profileface"),
            image_fields=("image",),
            factory=lambda files, rt, _: HaarFaceModel(files[0], files[1], rt),
            returns_image=False,
            max_batch_pixels=8 * 2048 * 2048,
        ),
        ModelKind(
            name="id-photo",
            task="id-photo",
            params_model=IdPhotoParams,
            files=(),
            image_fields=("image",),
            factory=lambda files, rt, _: IdPhotoModel(),
            needs=IdPhotoModel.needs,
            max_batch_pixels=8 * 2048 * 2048,
        ),
        ModelKind(
            name="stable-diffusion",
            task="text-to-image",
            params_model=DiffusionParams,
            files=(),
            image_fields=(),
            factory=_diffusion,
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
        _animegan("animeganv2_face_paint_512_v2", face_model=True),
        _animegan("animeganv2_face_paint_512_v1", face_model=True),
        _animegan("animeganv2_celeba_distill", face_model=False),
        _animegan("animeganv2_paprika", face_model=False),
    )
}
