"""The app spec: one application of serve_config.yaml, parsed once and cross-checked once.

``AppSpec`` holds an application's ``args`` (``stylefleet.config.AppConfig``), each model
deployment's batching (its ``user_config`` in the file's ``deployments:`` list, or the default)
and the router's A/B settings, checked against each other and against the model kinds: styles
and variants against their deployments' models (fixed params included), ``uses``, the deployment
order, batching against ``max_ongoing_requests``, A/B weights against the variants. A bad config
fails here with a message naming the field, before anything is deployed.

Everyone reads the config through this module: the Serve app builder (``AppSpec.from_args``:
Serve hands it the ``args`` alone and applies the user_configs itself, each through the checks
below), ``stylefleet config``/``run``/``k8s``/``bench`` and the Ray Data engine
(``load_serve_file``). Checking needs the kind table only, never ONNX Runtime or torch.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray.serve.schema import ServeDeploySchema

from stylefleet import profiles
from stylefleet.config import (
    AppConfig,
    BatchingConfig,
    DeploymentConfig,
    ModelSpec,
    RouterSettings,
    StyleConfig,
    VariantConfig,
)
from stylefleet.deployments.batching import validate_params
from stylefleet.deployments.kinds import KINDS, ModelKind
from stylefleet.deployments.registry import MODELS
from stylefleet.errors import InvalidParams

ROUTER = "router"  # the ingress deployment's name: its user_config is RouterSettings


class AppSpec(BaseModel):
    """One application, validated as a whole. Frozen: every reader sees the same one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "stylefleet"
    args: AppConfig
    batching: dict[str, BatchingConfig] = Field(
        default_factory=dict, description="model deployment -> its user_config; a deployment not named gets the default"
    )
    traffic: RouterSettings = Field(default_factory=RouterSettings, description="the router's user_config: A/B splits, shadows, gates")

    @classmethod
    def from_args(cls, args: AppConfig | Mapping[str, Any], *, name: str = "stylefleet") -> AppSpec:
        """The spec of an app's ``args`` alone (Serve's app builder gets nothing else)."""
        return cls(name=name, args=args if isinstance(args, AppConfig) else AppConfig.model_validate(args))

    @classmethod
    def from_application(cls, app: Mapping[str, Any]) -> AppSpec:
        """One entry of a serve config's ``applications``: its args and its deployments' user_configs."""
        batching: dict[str, Any] = {}
        traffic: Any = {}
        for entry in app.get("deployments") or []:
            if entry["name"] == ROUTER:
                traffic = entry.get("user_config") or {}
            else:
                batching[entry["name"]] = entry.get("user_config") or {}
        return cls.model_validate(
            {"name": app.get("name", "stylefleet"), "args": app.get("args") or {}, "batching": batching, "traffic": traffic}
        )

    # -- the cross-checks, once --------------------------------------------------------------

    @model_validator(mode="after")
    def _cross_checks(self) -> AppSpec:
        config = self.args
        if not config.styles:
            raise ValueError("styles: at least one style is needed")
        for name in config.models:
            if name not in MODELS:
                raise ValueError(f"models.{name}: unknown model; known: {sorted(MODELS)}")
        for name, style in config.styles.items():
            check_style(name, style, config.deployments, max_images=config.limits.max_images_per_request)
        for name, dep in config.deployments.items():
            check_precision(name, dep)
            check_uses(name, dep, config.deployments)
        deployment_order(config.deployments)  # raises on a cycle
        for name, batching in self.batching.items():
            if name not in config.deployments:
                raise ValueError(f"deployments[{name}]: no such model deployment; known: {sorted(config.deployments)}")
            batching.check_fits(config.deployments[name].max_ongoing_requests)
        check_traffic(config.styles, self.traffic)
        # From ``args`` alone (Serve's app builder) the split is not known yet: the router's
        # user_config is checked, gates included, when it is applied (``traffic_settings``).
        check_gates(config.styles, config.deployments, self.traffic, split_known="traffic" in self.model_fields_set)
        return self

    # -- what callers read -------------------------------------------------------------------

    @property
    def deployments(self) -> dict[str, DeploymentConfig]:
        return self.args.deployments

    def batching_of(self, deployment: str) -> BatchingConfig:
        """The deployment's batching: its user_config, else the default."""
        return self.batching.get(deployment) or BatchingConfig()

    def kind_of(self, deployment: str) -> ModelKind:
        return KINDS[self.args.deployments[deployment].model]

    def order(self) -> list[str]:
        """Deployment names, each after every deployment it uses (the order to bind them in)."""
        return deployment_order(self.args.deployments)

    def memory_budget_of(self, deployment: str) -> int | None:
        """A replica's memory budget in bytes: the deployment's ``memory_budget_bytes``, else its
        kind's default (None for kinds without one: no memory admission, no Ray ``memory``)."""
        return self.args.deployments[deployment].memory_budget_bytes or self.kind_of(deployment).memory_budget_bytes

    def model_spec(self, deployment: str) -> ModelSpec:
        spec = self.args.model_spec(deployment)
        return spec.model_copy(update={"memory_budget_bytes": self.memory_budget_of(deployment)})

    def traffic_settings(self, user_config: Mapping[str, Any] | None) -> RouterSettings:
        """A live change of the router's user_config, checked as the file's was."""
        settings = RouterSettings.model_validate(user_config or {})
        check_traffic(self.args.styles, settings)
        check_gates(self.args.styles, self.args.deployments, settings)
        return settings


def check_style(name: str, style: StyleConfig, deployments: Mapping[str, DeploymentConfig], *, max_images: int) -> None:
    """A style's variants name deployments of one kind, whose answer is an image; each variant's
    fixed params and defaults are valid for that kind, and its defaults are settable by clients."""
    variants = style.variant_list()
    models = set()
    for i, variant in enumerate(variants):
        where = f"styles.{name}.deployment" if style.variants is None else f"styles.{name}.variants[{i}].deployment"
        if variant.deployment not in deployments:
            raise ValueError(f"{where}: {variant.deployment!r} is not one of deployments {sorted(deployments)}")
        models.add(deployments[variant.deployment].model)
    if len(models) > 1:
        raise ValueError(
            f"styles.{name}.variants: all variants of a style must serve the same kind of model "
            f"(they take the same inputs and params); got {sorted(models)}"
        )
    kind = KINDS[models.pop()]
    if not kind.returns_image:
        raise ValueError(
            f"styles.{name}: deployment {variants[0].deployment!r} serves {kind.task}, whose answer is not "
            "an image; it is only for composed deployments (uses)"
        )
    for variant in variants:
        _check_variant_params(_where(name, style, variant), kind, variant)
    if kind.variant_param is not None and len({v.params[kind.variant_param] for v in variants}) > 1:
        raise ValueError(f"styles.{name}.variants: all variants must fix the same {kind.variant_param} (they take the same inputs)")
    client = kind.client_params_given({k for v in variants for k in v.params})
    for variant in variants:
        unsettable = set(variant.defaults) - client
        if unsettable:
            raise ValueError(
                f"{_where(name, style, variant)}.defaults: {', '.join(sorted(unsettable))} cannot be set by clients; fix it in params"
            )


def _where(name: str, style: StyleConfig, variant: VariantConfig) -> str:
    return f"styles.{name}" if style.variants is None else f"styles.{name}.variants.{variant.name}"


def _check_variant_params(where: str, kind: ModelKind, variant: VariantConfig) -> None:
    if kind.variant_param is not None and variant.params.get(kind.variant_param) not in kind.variants:
        raise ValueError(f"{where}.params.{kind.variant_param}: every {kind.name} style fixes it to one of {sorted(kind.variants)}")
    try:
        validate_params(kind.params_model, {**variant.defaults, **variant.params})
    except InvalidParams as exc:
        raise ValueError(f"{where}.params: {exc.message}") from None


def check_precision(name: str, dep: DeploymentConfig) -> None:
    """int8 only where the registry has an int8 file derived from each of the kind's files; fp16
    only for ONNX networks (and, by the schema, on CUDA)."""
    kind = KINDS[dep.model]
    if dep.precision not in kind.precisions():
        having = sorted(k.name for k in KINDS.values() if dep.precision in k.precisions())
        raise ValueError(
            f"deployments.{name}.precision: {dep.precision} is not available for model {dep.model} "
            f"(it has {', '.join(kind.precisions())}); {dep.precision} is available for: {', '.join(having) or 'none'}"
        )


def check_uses(name: str, dep: DeploymentConfig, deployments: Mapping[str, DeploymentConfig]) -> None:
    """A composed deployment names a deployment for each role its kind needs, of the right task."""
    needs = KINDS[dep.model].needs
    if set(dep.uses) != set(needs):
        wanted = ", ".join(f"{role} (a {task} deployment)" for role, task in needs.items()) or "nothing"
        raise ValueError(f"deployments.{name}.uses: the {dep.model} model needs {wanted}; got {sorted(dep.uses) or 'nothing'}")
    for role, target in dep.uses.items():
        if target not in deployments:
            raise ValueError(f"deployments.{name}.uses.{role}: {target!r} is not one of deployments {sorted(deployments)}")
        task = KINDS[deployments[target].model].task
        if task != needs[role]:
            raise ValueError(f"deployments.{name}.uses.{role}: {target!r} serves {task}; {role} needs a {needs[role]} deployment")


def deployment_order(deployments: Mapping[str, DeploymentConfig]) -> list[str]:
    """Deployment names, each after every deployment it uses; a cycle of ``uses`` is a config error."""
    sorter = graphlib.TopologicalSorter({name: [t for t in dep.uses.values() if t in deployments] for name, dep in deployments.items()})
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it against the edges: name after what it uses
        raise ValueError(f"deployments: {' -> '.join(cycle)} is a cycle of uses") from None


def check_traffic(styles: Mapping[str, StyleConfig], settings: RouterSettings) -> None:
    """The router's A/B splits, shadow shares and per-style gates name known styles and variants,
    with weights that are non-negative and not all zero and shares that are percentages (the gates'
    thresholds are checked by ``GateSettings`` itself)."""
    for section, table in (("splits", settings.splits), ("shadows", settings.shadows), ("gates.styles", settings.gates.styles)):
        for name in table:
            if name not in styles:
                raise ValueError(f"user_config.{section}.{name}: unknown style")
    for name, style in styles.items():
        known = {v.name for v in style.variant_list()}
        for variant, percent in settings.shadows.get(name, {}).items():
            if variant not in known:
                raise ValueError(f"user_config.shadows.{name}.{variant}: unknown variant; known: {', '.join(sorted(known))}")
            if not 0 <= percent <= 100:
                raise ValueError(f"user_config.shadows.{name}.{variant}: {percent} is not a percentage (0-100)")
        if name in settings.splits:
            check_weights(f"user_config.splits.{name}", settings.splits[name], known)


def style_weights(name: str, style: StyleConfig, settings: RouterSettings) -> dict[str, float]:
    """Each variant's traffic weight: the split's (variants it does not name get none), or with no
    split an equal share for every variant that is not a shadow (every variant, if all are): the
    rule the router's ``build_traffic`` applies to the live settings."""
    known = [v.name for v in style.variant_list()]
    if name in settings.splits:
        return {v: settings.splits[name].get(v, 0.0) for v in known}
    shadow = settings.shadows.get(name, {})
    live = [v for v in known if v not in shadow] or known
    return {v: (1.0 if v in live else 0.0) for v in known}


def check_gates(
    styles: Mapping[str, StyleConfig],
    deployments: Mapping[str, DeploymentConfig],
    settings: RouterSettings,
    *,
    split_known: bool = True,
) -> None:
    """A variant whose deployment runs a derived network (int8) may take the largest weight of its
    style only while that network's recorded quality against fp32 holds the registry's gate; until
    then it can be a shadow, or take a smaller share (docs/variants.md "int8 variants").
    ``split_known`` False: only styles with one deployment are checked (their share is all)."""
    for name, style in styles.items():
        if style.variants is not None and not split_known:
            continue
        weights = style_weights(name, style, settings)
        top = max(weights.values(), default=0.0)
        for variant in style.variant_list():
            dep = deployments[variant.deployment]
            if dep.precision == "fp32" or top <= 0 or weights[variant.name] < top:
                continue
            for file in KINDS[dep.model].files_at(dep.precision):
                quality = MODELS[file].quality
                if quality is None or not quality.failures():
                    continue
                where = f"user_config.splits.{name}" if name in settings.splits else f"styles.{name}"
                raise ValueError(
                    f"{where}: variant {variant.name!r} (deployment {variant.deployment}, precision {dep.precision}) would take "
                    f"the largest share of the style's traffic, but {file} misses its quality gate against fp32: "
                    f"{'; '.join(quality.failures())} ({quality.describe()}). Keep it a shadow, or give an fp32 variant "
                    "the larger weight"
                )


def check_weights(where: str, weights: Mapping[str, float], known: set[str]) -> None:
    """Non-negative, not all zero, only known variants; the message names the bad field."""
    for name, weight in weights.items():
        if name not in known:
            raise ValueError(f"{where}.{name}: unknown variant; known: {', '.join(sorted(known))}")
        if weight < 0:
            raise ValueError(f"{where}.{name}: weight {weight} is negative")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"{where}: weights are all zero; at least one variant needs traffic")


# -- the serve config file ---------------------------------------------------------------------


class ConfigError(ValueError):
    """The config file cannot be read, or is not a valid serve config; the message says where."""


@dataclass(frozen=True)
class ServeFile:
    """A serve config file (merged with a profile, if any), checked: Serve's own schema, then each
    application's spec. ``document`` is the data as written, which Serve deploys unchanged."""

    document: dict[str, Any]
    apps: dict[str, AppSpec]

    @property
    def app(self) -> AppSpec:
        """The stylefleet application: the first one (the shipped configs have one)."""
        return next(iter(self.apps.values()))

    @property
    def http_port(self) -> int:
        return int((self.document.get("http_options") or {}).get("port", 8000))

    @property
    def http_host(self) -> str:
        return str((self.document.get("http_options") or {}).get("host", "127.0.0.1"))

    def direct_ingress_blocker(self) -> str | None:
        """Why the router replica cannot serve HTTP itself (``stylefleet run --ingress auto``
        then keeps Serve's proxy in front), or None: direct ingress serves one application
        through one router replica on the config's port."""
        if len(self.document["applications"]) != 1:
            return f"the config has {len(self.document['applications'])} applications (one port serves one)"
        if self.document.get("proxy_location") == "Disabled":
            return "proxy_location is Disabled (no HTTP at all)"
        replicas = self.app.args.router.num_replicas
        for entry in self.document["applications"][0].get("deployments") or []:
            if entry.get("name") == ROUTER:
                replicas = entry.get("num_replicas", replicas)
                if entry.get("autoscaling_config"):
                    return "the router autoscales (one port serves one replica)"
        if replicas != 1:
            return f"the router runs {replicas} replicas (one port serves one)"
        return None


def load_serve_file(path: str | Path, profile: str | Path | None = None) -> ServeFile:
    """Read, merge the profile, and check the whole file; raises ConfigError naming the problem."""
    try:
        document = profiles.load(path, profile)
    except OSError as exc:
        raise ConfigError(f"cannot read the config: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    return check_document(document)


def check_document(document: Any) -> ServeFile:
    """Serve's own schema, then each application's spec (pydantic's errors name the field)."""
    if not isinstance(document, dict) or not isinstance(document.get("applications"), list) or not document["applications"]:
        raise ConfigError("a serve config needs an applications: list (README 'Configuration')")
    try:
        ServeDeploySchema.model_validate(document)
        apps = [AppSpec.from_application(app) for app in document["applications"]]
    except (ValidationError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return ServeFile(document=document, apps={a.name: a for a in apps})
