"""The model kinds a deployment can serve: their task, params, files and inputs, as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from deployments.background import RemoveBackgroundParams, U2NetModel
from deployments.batching import BatchModel
from deployments.onnx_session import RuntimeOptions
from deployments.registry import ResolvedModel
from deployments.restyle import ArbitraryStyleModel, RestyleParams
from deployments.stylize import MultiStyleModel, StylizeParams


@dataclass(frozen=True)
class ModelKind:
    name: str
    task: str
    params_model: type[BaseModel]
    files: tuple[str, ...]
    image_fields: tuple[str, ...]
    factory: Callable[[list[ResolvedModel], RuntimeOptions], BatchModel[Any]]


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
    )
}
