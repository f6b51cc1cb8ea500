"""The model kinds a deployment can serve: their task, params, files and inputs, as data.

A kind with ``needs`` is composed: its deployment loads no weights, it calls the deployments
that the config names for each role (``deployments.<name>.uses``) through deployment handles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from deployments.background import RemoveBackgroundParams, U2NetModel
from deployments.faces import FaceDetectParams, HaarFaceModel
from deployments.idphoto import IdPhotoModel, IdPhotoParams
from deployments.onnx_session import RuntimeOptions
from deployments.registry import MODELS, ResolvedModel
from deployments.restyle import ArbitraryStyleModel, RestyleParams
from deployments.stylize import MultiStyleModel, StylizeParams


@dataclass(frozen=True)
class ModelKind:
    name: str
    task: str
    params_model: type[BaseModel]
    files: tuple[str, ...]
    image_fields: tuple[str, ...]
    factory: Callable[[list[ResolvedModel], RuntimeOptions], Any]  # a BatchModel, or a ComposedModel
    needs: Mapping[str, str] = field(default_factory=dict)  # role -> task of the deployment playing it
    returns_image: bool = True  # False: its answer is data for other deployments (no style may use it)

    @property
    def composed(self) -> bool:
        return bool(self.needs)

    def expected_sha256(self) -> str:
        """The registry's checksums of this kind's files (each verified when a replica loads it)."""
        return "+".join(MODELS[f].sha256 for f in self.files)


KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            name="multistyle26",
            task="stylize",
            params_model=StylizeParams,
            files=("multistyle26",),
            image_fields=("image",),
            factory=lambda files, rt: MultiStyleModel(files[0], rt),
        ),
        ModelKind(
            name="arbitrary",
            task="restyle",
            params_model=RestyleParams,
            files=("arbitrary_predict", "arbitrary_transform"),
            image_fields=("image", "style_image"),
            factory=lambda files, rt: ArbitraryStyleModel(files[0], files[1], rt),
        ),
        ModelKind(
            name="u2netp",
            task="remove-background",
            params_model=RemoveBackgroundParams,
            files=("u2netp",),
            image_fields=("image",),
            factory=lambda files, rt: U2NetModel(files[0], rt),
        ),
        ModelKind(
            name="haar-face",
            task="detect-faces",
            params_model=FaceDetectParams,
            files=("haarcascade_frontalface_default", "haarcascade_profileface"),
            image_fields=("image",),
            factory=lambda files, rt: HaarFaceModel(files[0], files[1], rt),
            returns_image=False,
        ),
        ModelKind(
            name="id-photo",
            task="id-photo",
            params_model=IdPhotoParams,
            files=(),
            image_fields=("image",),
            factory=lambda files, rt: IdPhotoModel(),
            needs=IdPhotoModel.needs,
        ),
    )
}
