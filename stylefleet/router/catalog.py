"""The style catalogue: style names -> deployment + fixed params, and request param parsing. Pure."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from stylefleet.deployments.batching import OutputSpec, validate_params
from stylefleet.deployments.kinds import ModelKind
from stylefleet.deployments.params import MAX_SEED
from stylefleet.errors import InvalidParams, UnknownStyle, clip
from stylefleet.spec import AppSpec


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
    defaults: dict[str, Any] = field(default_factory=dict)  # params clients may set, unless they do
    precision: str = "fp32"  # its deployment's (GET /v1/styles says it)


@dataclass(frozen=True)
class Style:
    name: str
    kind: ModelKind
    description: str
    variants: dict[str, Variant]
    max_images: int = 1  # n: images one request may ask for (seeded kinds only)

    @property
    def _first(self) -> Variant:
        return next(iter(self.variants.values()))

    @property
    def task(self) -> str:
        # Every variant fixes the kind's variant_param (a diffusion pipeline) alike: checked by the spec.
        return self.kind.shape(self._first.fixed_params)[0]

    @property
    def image_fields(self) -> tuple[str, ...]:
        return self.kind.shape(self._first.fixed_params)[1]

    @property
    def fixed_names(self) -> set[str]:
        """Params some variant fixes: clients may set none of them."""
        return {k for v in self.variants.values() for k in v.fixed_params}

    @property
    def client_params(self) -> set[str]:
        """Params a client may send: the kind's (all, or its client_params) less the fixed ones."""
        return self.kind.client_params_given(self.fixed_names)

    @property
    def defaults(self) -> dict[str, Any]:
        """The defaults every variant shares (what GET /v1/styles shows)."""
        first = self._first.defaults
        return {k: v for k, v in first.items() if all(x.defaults.get(k, _MISSING) == v for x in self.variants.values())}

    @property
    def shared_fixed(self) -> dict[str, Any]:
        first = self._first.fixed_params
        return {k: v for k, v in first.items() if all(x.fixed_params.get(k, _MISSING) == v for x in self.variants.values())}

    def variant(self, name: str) -> Variant:
        return self.variants[name]

    def describe(self) -> dict[str, Any]:
        """What GET /v1/styles shows of this style: built once (a style never changes while the
        app runs, and building it takes pydantic's JSON schema, ~8 ms a style); a shallow copy,
        so a caller may set top-level keys (the live variant weights) without touching it."""
        return dict(self._description)

    @functools.cached_property
    def _description(self) -> dict[str, Any]:
        hidden = set(self.kind.params_model.model_fields) - self.client_params
        params = describe_params(self.kind.params_model, hide=hidden)
        defaults, fixed = self.defaults, self.shared_fixed
        for entry in params:  # the style's own defaults and bounds (a preset's min_steps/max_steps)
            name = entry["name"]
            if name in defaults:
                entry["default"] = defaults[name]
            for bound, key in (("min", "minimum"), ("max", "maximum")):
                if f"{bound}_{name}" in fixed:
                    entry[key] = fixed[f"{bound}_{name}"]
        if self.kind.seeded:
            params.append(
                {"name": "n", "type": "integer", "default": 1, "minimum": 1, "maximum": self.max_images,
                 "description": "images to make, with seeds seed, seed+1, ...; more than one come back as a zip (or multipart/mixed)"}
            )
        return {
            "name": self.name,
            "task": self.task,
            "description": self.description,
            "inputs": list(self.image_fields),
            "params": params + describe_params(OutputParams),
        }


_MISSING = object()


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
    """Every style and variant of a checked app spec (``stylefleet.spec`` checked them against
    their models), ready for requests."""

    def __init__(self, spec: AppSpec) -> None:
        config = spec.args
        self._styles: dict[str, Style] = {}
        for name, style in config.styles.items():
            variants = {
                v.name: Variant(
                    name=v.name,
                    deployment=v.deployment,
                    fixed_params=dict(v.params),
                    defaults=dict(v.defaults),
                    precision=config.deployments[v.deployment].precision,
                )
                for v in style.variant_list()
            }
            kind = spec.kind_of(style.variant_list()[0].deployment)
            self._styles[name] = Style(
                name=name,
                kind=kind,
                description=style.description,
                variants=variants,
                max_images=config.limits.max_images_per_request if kind.seeded else 1,
            )

    def __iter__(self) -> Iterator[Style]:
        return iter(self._styles.values())

    def get(self, name: str) -> Style:
        try:
            return self._styles[name]
        except KeyError:
            raise UnknownStyle(f"no style named {clip(name)}; GET /v1/styles lists them") from None


def split_params(style: Style, variant: Variant, fields: dict[str, Any]) -> tuple[dict[str, Any], OutputSpec]:
    """Form fields -> (model params with the variant's fixed ones applied, output spec).

    Raises InvalidParams for unknown fields, bad values, or an attempt to set a fixed param (one
    any variant fixes, or one the kind keeps from clients). The variant's defaults fill the rest.
    """
    output_names = set(OutputParams.model_fields)
    fixed = (set(style.kind.params_model.model_fields) - style.client_params) & set(fields)
    if fixed:
        raise InvalidParams(f"{', '.join(sorted(fixed))}: fixed by style {style.name!r}, cannot be set")
    output_fields = {k: v for k, v in fields.items() if k in output_names}
    refuse_non_finite(OutputParams, output_fields)
    output = validate_params(OutputParams, output_fields)
    model_fields = {k: v for k, v in fields.items() if k not in output_names}
    params = {**variant.defaults, **model_fields, **variant.fixed_params}
    refuse_non_finite(style.kind.params_model, params)
    checked = validate_params(style.kind.params_model, params)
    return checked.model_dump(), OutputSpec(format=output.format, quality=output.quality)


def refuse_non_finite(params_model: type[BaseModel], params: dict[str, Any]) -> None:
    """NaN and infinities in a numeric param are refused as such: pydantic would compare them with
    the bounds and answer "Input should be less than or equal to 1" for NaN, which misleads."""
    for name, value in params.items():
        info = params_model.model_fields.get(name)
        if info is None or not _numeric(info.annotation):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            continue  # not a number at all: pydantic's own message says so
        if math.isnan(number):
            raise InvalidParams(f"{name}: not a number (NaN); send a finite number")
        if math.isinf(number):
            raise InvalidParams(f"{name}: infinite; send a finite number")


def _numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in get_args(annotation))


def split_count(style: Style, fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Take ``n`` (images wanted) out of the fields of a seeded style: (the other fields, n)."""
    if not style.kind.seeded or "n" not in fields:
        return fields, 1
    rest = {k: v for k, v in fields.items() if k != "n"}
    value = fields["n"]
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise InvalidParams(f"n: {value!r} is not a whole number")
    n = int(value)
    if not 1 <= n <= style.max_images:
        raise InvalidParams(f"n: must be 1 to {style.max_images} (limits.max_images_per_request), got {n}")
    return rest, n


def seeded_params(params: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """n copies of the params with seeds seed, seed+1, ...: image i is the one seed+i gives alone."""
    if n == 1 or "seed" not in params:
        return [params]
    return [{**params, "seed": (int(params["seed"]) + i) % (MAX_SEED + 1)} for i in range(n)]
