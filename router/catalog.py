"""The style catalogue: style names -> deployment + fixed params, and request param parsing. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.batching import OutputSpec, validate_params
from deployments.kinds import KINDS, ModelKind
from stylefleet.config import AppConfig
from stylefleet.errors import InvalidParams, UnknownStyle


class OutputParams(BaseModel):
    """Params every style accepts: how the result is encoded."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["png", "jpeg", "webp"] = Field("png", description="output encoding")
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality (PNG is lossless)")


@dataclass(frozen=True)
class Variant:
    name: str
    deployment: str
    fixed_params: dict[str, Any]


@dataclass(frozen=True)
class Style:
    name: str
    kind: ModelKind
    description: str
    variants: dict[str, Variant]

    @property
    def task(self) -> str:
        return self.kind.task

    @property
    def fixed_names(self) -> set[str]:
        """Params some variant fixes: clients may set none of them."""
        return {k for v in self.variants.values() for k in v.fixed_params}

    def variant(self, name: str) -> Variant:
        return self.variants[name]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "description": self.description,
            "inputs": list(self.kind.image_fields),
            "params": describe_params(self.kind.params_model, hide=self.fixed_names) + describe_params(OutputParams),
        }


def describe_params(model: type[BaseModel], hide: set[str] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """Each field as {name, type, default, description, minimum/maximum/enum}, from the pydantic schema."""
    schema = model.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        if name in hide:
            continue
        entry: dict[str, Any] = {"name": name}
        variants = prop.get("anyOf", [prop])
        types = [v.get("type") for v in variants if v.get("type") and v.get("type") != "null"]
        entry["type"] = types[0] if types else "string"
        if any(v.get("type") == "null" for v in variants):
            entry["nullable"] = True
        entry["default"] = prop.get("default")
        if "enum" in prop:
            entry["enum"] = prop["enum"]
        for src, dst in (("minimum", "minimum"), ("maximum", "maximum")):
            for v in variants:
                if src in v:
                    entry[dst] = v[src]
        entry["description"] = prop.get("description", "")
        out.append(entry)
    return out


class Catalog:
    """Every style and variant, checked against its deployment's model at construction (deploy time)."""

    def __init__(self, config: AppConfig) -> None:
        self._styles: dict[str, Style] = {}
        for name, style in config.styles.items():
            variants = {}
            kind = KINDS[config.deployments[style.variant_list()[0].deployment].model]
            for v in style.variant_list():
                where = f"styles.{name}.params" if style.variants is None else f"styles.{name}.variants.{v.name}.params"
                try:
                    validate_params(kind.params_model, v.params)
                except InvalidParams as exc:
                    raise ValueError(f"{where}: {exc.message}") from None
                variants[v.name] = Variant(name=v.name, deployment=v.deployment, fixed_params=dict(v.params))
            self._styles[name] = Style(name=name, kind=kind, description=style.description, variants=variants)

    def __iter__(self) -> Iterator[Style]:
        return iter(self._styles.values())

    def get(self, name: str) -> Style:
        try:
            return self._styles[name]
        except KeyError:
            raise UnknownStyle(f"no style named {name!r}; GET /v1/styles lists them") from None


def split_params(style: Style, variant: Variant, fields: dict[str, str]) -> tuple[dict[str, Any], OutputSpec]:
    """Form fields -> (model params with the variant's fixed ones applied, output spec).

    Raises InvalidParams for unknown fields, bad values, or an attempt to set a fixed param.
    """
    output_names = set(OutputParams.model_fields)
    fixed = style.fixed_names & set(fields)
    if fixed:
        raise InvalidParams(f"{', '.join(sorted(fixed))}: fixed by style {style.name!r}, cannot be set")
    output = validate_params(OutputParams, {k: v for k, v in fields.items() if k in output_names})
    model_fields = {k: v for k, v in fields.items() if k not in output_names}
    params = {**model_fields, **variant.fixed_params}
    checked = validate_params(style.kind.params_model, params)
    return checked.model_dump(), OutputSpec(format=output.format, quality=output.quality)
