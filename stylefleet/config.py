"""The typed application config: the ``args`` of ``serve_config.yaml``, field by field.

Every knob has a default and a description here, the one place that knows them; the README's
knob table is written from this file. This is the schema only: what a field holds on its own.
What needs the model kinds (styles against their models, ``uses``, the deployment order, batching
against ``max_ongoing_requests``, A/B weights against the variants) is checked once, in
``stylefleet.spec``, which every caller goes through. Imports no model and no runtime.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

Device = Literal["cpu", "cuda"]
# The numbers a deployment's network computes in: fp32 (the shipped weights), int8 (a derived
# file the registry lists, built locally from the fp32 one), fp16 (converted at load, CUDA only).
Precision = Literal["fp32", "int8", "fp16"]

# Environment every Ray process of the service starts with (`stylefleet run` sets each one unless
# already set; `stylefleet k8s` puts them on every pod). Each was measured on the 2-core machine
# (docs/performance.md "Where the CPU goes", docs/operations.md "The Ray environment"):
# - Serve's controller reconciles every 0.1 s by default: 5.9% of a core idle (1.5% at 1 s); at
#   0.5 s it still acts on autoscaling and health well inside their own delays (seconds).
# - Ray puts any object over 100 KiB (a 512 px PNG is 0.4-0.5 MB) in the shared-memory store,
#   through the raylet, on each hop (replica -> router -> proxy); up to 2 MiB they travel inside
#   the call's own message: the raylet's CPU per request fell from 6-8 ms to 1.4-2.3 ms.
# - Serve's replicas and handles export their cached metrics every 0.1 s by default; Prometheus
#   scrapes every 5-15 s, so once a second loses nothing and costs a tenth of the wake-ups.
RAY_ENVIRONMENT: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_max_direct_call_object_size": str(2 * 1024 * 1024),
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    # uvicorn (Serve's HTTP proxy and a direct-ingress replica) believes X-Forwarded-For from the
    # addresses in FORWARDED_ALLOW_IPS, 127.0.0.1 by default, and rewrites the client address with
    # it: any local client could pick its own. Empty trusts no one; the router resolves the client
    # itself from limits.trusted_proxies (stylefleet.router.clients).
    "FORWARDED_ALLOW_IPS": "",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


QueueKind = Literal["backlog", "serve-batch"]


class BatchingConfig(_Strict):
    """A model deployment's ``user_config``: batching, changed live through ``reconfigure``.

    It lives in serve_config.yaml's ``deployments: [{name, user_config}]`` section, not in
    ``args``: Serve applies a changed ``user_config`` there to running replicas, whereas any
    change to ``args`` rebuilds the app and restarts every replica.
    """

    max_batch_size: PositiveInt = Field(8, le=256, description="most requests coalesced into one batch")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="the longest a batch's first request waits, from its arrival, for others to join it (0: never; "
        "what is queued when the batch forms goes with it), whichever `queue` forms the batches",
    )
    max_batch_pixels: PositiveInt | None = Field(
        None,
        description="memory budget: most image pixels (after max_side) in one batch; an image over it runs alone. "
        "Default: the model's own (README 'Pixel budget')",
    )
    queue: QueueKind = Field(
        "backlog",
        description="what forms the batches. backlog: the next batch is taken from the requests queued when the "
        "model is free, under the pixel budget; serve-batch: Ray Serve's @serve.batch, which forms the next batch "
        "while earlier ones run (kept for comparison, docs/batching.md)",
    )

    def check_fits(self, max_ongoing_requests: int) -> None:
        """A replica never holds more than max_ongoing_requests, so a bigger batch could never form.
        The app spec checks the config's user_configs with it; a replica, a live change."""
        if self.max_batch_size > max_ongoing_requests:
            raise ValueError(
                f"user_config.max_batch_size ({self.max_batch_size}) is above this deployment's "
                f"max_ongoing_requests ({max_ongoing_requests}): batches could never fill"
            )


class AutoscalingConfig(_Strict):
    """Replicas follow queue length: Serve adds one when (queued + running) per replica stays
    above ``target_ongoing_requests`` for ``upscale_delay_s``."""

    min_replicas: int = Field(1, ge=0, description="replicas kept when idle (0 allows scale to zero)")
    max_replicas: PositiveInt = Field(1, description="ceiling; see the README's CPU rule")
    target_ongoing_requests: PositiveFloat | None = Field(
        None, description="requests per replica Serve aims for; default: the default max_batch_size (a full batch)"
    )
    upscale_delay_s: float = Field(10.0, ge=0.0, description="how long the queue must stay long before adding a replica")
    downscale_delay_s: float = Field(60.0, ge=0.0, description="how long it must stay short before removing one")
    metrics_interval_s: float = Field(2.0, gt=0.0, description="how often replicas report their queue length")
    look_back_period_s: float = Field(10.0, gt=0.0, description="window the queue length is averaged over")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self

    def target(self) -> float:
        return self.target_ongoing_requests or float(BatchingConfig().max_batch_size)

    def to_serve(self) -> dict[str, Any]:
        """Ray Serve's ``autoscaling_config``."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(1, self.min_replicas),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target(),
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "metrics_interval_s": self.metrics_interval_s,
            "look_back_period_s": self.look_back_period_s,
        }


ModelName = Literal[
    "multistyle26",
    "arbitrary",
    "u2netp",
    "haar-face",
    "face-mesh",
    "id-photo",
    "stable-diffusion",
    "animeganv2_face_paint_512_v2",
    "animeganv2_face_paint_512_v1",
    "animeganv2_celeba_distill",
    "animeganv2_paprika",
]

SD_REFERENCE_PIXEL_STEPS = 512 * 512 * 25  # one SD 1.5 image at its native size and 25 steps


class DiffusionSource(_Strict):
    """Where a Stable Diffusion deployment's weights are and how it runs them.

    ``model`` and ``controlnet`` are local folders (``save_pretrained`` layout) or hub ids; hub
    ids are looked up in the local hub cache only, unless the app sets ``allow_download``.
    """

    model: str = Field(description="diffusers folder or hub id of the base model (SD 1.x/2.x layout)")
    controlnet: str | None = Field(None, description="ControlNet folder or hub id (canny); needed by controlnet-canny presets")
    variant: str | None = Field(None, description="weight file variant to load, e.g. 'fp16'")
    safety_checker: bool = Field(True, description="run the model folder's safety checker where it has one")
    vae_slicing_min_batch: PositiveInt = Field(
        4, description="decode latents one image at a time from this many images per call (bounds the VAE's peak memory)"
    )
    batch_weight_unit_pixel_steps: PositiveInt = Field(
        SD_REFERENCE_PIXEL_STEPS,
        description="a request weighs ceil(width x height x steps / this) in max_batch_size units",
    )
    oom_cooldown_s: PositiveFloat = Field(
        300.0, description="after a CUDA out-of-memory, how long the lowered batch limit stays in force"
    )
    probe_batch_at_start: bool = Field(
        True, description="on CUDA, find the largest batch of 512x512 images that fits at start-up"
    )


# Deployment settings that were removed, and what to write instead (``DeploymentConfig`` names them).
REMOVED_DEPLOYMENT_KNOBS = {
    "spinning": "idle ONNX Runtime threads always sleep, so replicas of several models share the cores; "
    "delete it (for more speed per replica raise num_cpus and threads)",
    "lone_call_threads": "a lone request's call takes model_calls x threads threads (at most the cores) "
    "on its own; delete it, or set lone_call: false to turn that second session off",
}


class DeploymentConfig(_Strict):
    """One model deployment (one model, its replicas and batching)."""

    model: ModelName = Field(description="which model kind this deployment serves")
    uses: dict[str, str] = Field(
        default_factory=dict,
        description="composed kinds only (id-photo): role -> the deployment it calls through a handle",
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: PositiveInt = Field(16, description="requests a replica holds at once; >= max_batch_size")
    max_queued_requests: int = Field(
        64, ge=-1, description="requests waiting for a replica before callers get 503 overloaded (-1: no bound)"
    )
    num_cpus: float = Field(1.0, ge=0.0, description="Ray CPUs reserved per replica (0: it only waits on others)")
    threads: PositiveInt = Field(
        1,
        description="ONNX Runtime intra-op threads per network call (OpenCV's for haar-face, torch's for torch models). "
        "Idle threads sleep, so replicas of several models share the cores",
    )
    model_calls: PositiveInt | None = Field(
        None,
        le=64,
        description="batches one replica runs through its network at once, each on `threads` threads; default: for "
        "the ONNX models on CPU, the replica's cores over threads (several one-thread calls beat one call on "
        "several threads here), else 1. Memory grows with it: each call in flight holds its batch's arena",
    )
    lone_call: bool = Field(
        True,
        description="ONNX models on CPU: a batch of one request that starts while its replica is otherwise idle "
        "(nothing queued, no other batch running) runs on model_calls x threads threads, at most the cores, "
        "through a second session of the same network (same bytes out); none where that is no more than "
        "`threads`. false: no second session (its memory saved, a lone request runs on `threads`)",
    )
    device: Device = Field("cpu", description="cpu or cuda")
    precision: Precision = Field(
        "fp32",
        description="what the network computes in. fp32: the shipped weights. int8: the registry's int8 file derived "
        "from them (u2netp only), built into the model cache ($STYLEFLEET_MODEL_CACHE, else model_dir, else "
        "~/.cache/stylefleet/models) by `stylefleet quantize` or at the replica's first start, sha256 verified. "
        "fp16: the ONNX models converted at load, with device: cuda only",
    )
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="Ray GPU share per replica (logical only)")
    memory_budget_bytes: PositiveInt | None = Field(
        None,
        ge=64 * 1024 * 1024,
        description="most memory (RSS) one replica may use: its idle footprint after loading and warming up, plus "
        "the requests it admits at once (decoded, queued, in the network, encoding), each reserving its "
        "estimate (its pixels after max_side x the model's measured bytes per pixel) before it is decoded. "
        "Also Ray's `memory` resource for the replica. Default: the model's own (docs/batching.md 'Memory'); "
        "none for composed and generative models",
    )
    memory_max_waiting: int = Field(
        16,
        ge=0,
        le=1024,
        description="requests a replica holds waiting for memory (first in, first out); one more gets 503 overloaded",
    )
    diffusion: DiffusionSource | None = Field(None, description="weights and knobs of a stable-diffusion deployment")

    @model_validator(mode="before")
    @classmethod
    def _removed_knobs(cls, data: Any) -> Any:
        """A knob that no longer exists gets a message saying what to do instead, not only "extra"."""
        if isinstance(data, dict):
            for knob, instead in REMOVED_DEPLOYMENT_KNOBS.items():
                if knob in data:
                    raise ValueError(f"{knob} is no longer a setting: {instead}")
        return data

    @model_validator(mode="after")
    def _batch_fits(self) -> DeploymentConfig:
        default_batch = BatchingConfig().max_batch_size
        if self.max_ongoing_requests < default_batch:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least the default "
                f"max_batch_size ({default_batch}), or batches can never fill"
            )
        target = self.autoscaling.target()
        if target >= self.max_ongoing_requests:
            raise ValueError(
                f"autoscaling.target_ongoing_requests ({target:g}) must be below max_ongoing_requests "
                f"({self.max_ongoing_requests}): a replica never holds more, so Serve would never scale up"
            )
        if self.device == "cuda" and self.num_gpus <= 0:
            raise ValueError("device: cuda needs num_gpus > 0")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("precision: fp16 needs device: cuda (on a CPU fp16 runs slower than fp32); use int8 or fp32")
        if (self.model == "stable-diffusion") != (self.diffusion is not None):
            raise ValueError("diffusion: needed by model stable-diffusion (diffusion.model names the weights), and only by it")
        return self



class ModelSource(_Strict):
    path: str | None = Field(None, description="a local copy of the weight file (checksum still verified)")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="the file's sha256, pinned here where the registry has none (AnimeGANv2) or to accept another version",
    )


class VariantConfig(_Strict):
    """One way of serving a style: a deployment and the params it fixes."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    deployment: str
    params: dict[str, Any] = Field(default_factory=dict, description="fixed params; clients cannot override them")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="this style's defaults for params clients may set (a preset's prompt, seed, steps)"
    )

    @model_validator(mode="after")
    def _defaults_are_not_fixed(self) -> VariantConfig:
        _check_defaults(self.params, self.defaults)
        return self


def _check_defaults(params: dict[str, Any], defaults: dict[str, Any]) -> None:
    both = set(params) & set(defaults)
    if both:
        raise ValueError(f"defaults: {', '.join(sorted(both))} also fixed in params; a param is either fixed or a default")


class StyleConfig(_Strict):
    """A style: a name clients use, bound either to one deployment + fixed params, or to variants.

    Variants are A/B arms; their traffic weights and shadow shares are the router's
    ``user_config`` (``RouterSettings``), so they change live without restarting anything.
    """

    description: str = ""
    deployment: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="fixed params; clients cannot override them")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="this style's defaults for params clients may set (a preset's prompt, seed, steps)"
    )
    variants: list[VariantConfig] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> StyleConfig:
        if (self.deployment is None) == (self.variants is None):
            raise ValueError("give either deployment (+ params) or variants, not both and not neither")
        if self.variants is not None:
            if not self.variants:
                raise ValueError("variants: at least one variant is needed")
            names = [v.name for v in self.variants]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"variants: names must be unique, repeated: {', '.join(duplicates)}")
            if self.params:
                raise ValueError("params: with variants, give params per variant")
            if self.defaults:
                raise ValueError("defaults: with variants, give defaults per variant")
        _check_defaults(self.params, self.defaults)
        return self

    def variant_list(self) -> list[VariantConfig]:
        if self.variants is not None:
            return self.variants
        assert self.deployment is not None
        return [VariantConfig(name=DEFAULT_VARIANT, deployment=self.deployment, params=self.params, defaults=self.defaults)]


DEFAULT_VARIANT = "default"


class MatteGate(_Strict):
    """What a shadow's mattes must reach, on the means (``stylefleet.compare.matte_drift``)."""

    min_iou: float = Field(0.98, ge=0.0, le=1.0, description="least mean IoU of the subjects (alpha >= 0.5), 0-1")
    max_mean_abs_alpha_diff: float = Field(0.01, ge=0.0, le=1.0, description="most mean |alpha difference|, 0-1")
    max_edge_error: float = Field(
        0.05, ge=0.0, description="most mean |Sobel gradient difference| over the primary matte's edge band (alpha units)"
    )


class ImageGate(_Strict):
    """What a shadow's images must reach, on the means (``stylefleet.compare.drift``)."""

    min_ssim: float = Field(0.95, ge=-1.0, le=1.0, description="least mean SSIM of the luma, -1 to 1")
    min_psnr_db: float = Field(30.0, ge=0.0, description="least mean PSNR in dB (identical pairs, infinite, are left out)")


class Gate(_Strict):
    """The quality gate a shadow variant passes before it may take traffic."""

    matte: MatteGate = Field(default_factory=MatteGate, description="thresholds for mattes (remove-background)")
    image: ImageGate = Field(default_factory=ImageGate, description="thresholds for images (every other task)")
    min_comparisons: PositiveInt = Field(20, description="comparisons a pair needs before its verdict is pass or fail")


class GateSettings(Gate):
    """``Gate`` for every style, and per-style overrides merged onto it field by field."""

    styles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="style -> the gate fields it sets differently, e.g. {remove-background: {matte: {min_iou: 0.99}}}",
    )

    @model_validator(mode="after")
    def _overrides(self) -> GateSettings:
        for style in self.styles:
            self.for_style(style)
        return self

    def for_style(self, style: str) -> Gate:
        """The gate of ``style``: the global one with the style's override merged in."""
        base = self.model_dump(exclude={"styles"})
        override = self.styles.get(style)
        if not override:
            return Gate.model_validate(base)
        try:
            return Gate.model_validate(_merged(base, override))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"gates.styles.{style}: {problems}") from None


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class RouterSettings(_Strict):
    """The router's ``user_config``: A/B weights, shadow shares and the shadows' quality gate, changed live.

    ``splits``: style -> variant -> weight (non-negative, not all zero). Variants a split does not
    name get no traffic; a style with no split shares traffic equally among its variants that are
    not shadows. ``shadows``: style -> variant -> percent of that style's traffic also sent to the
    variant, whose result is compared with the user's and thrown away. ``gates``: the thresholds
    each shadow's comparisons are judged by (``GET /v1/shadow``).
    """

    splits: dict[str, dict[str, float]] = Field(default_factory=dict)
    shadows: dict[str, dict[str, float]] = Field(default_factory=dict)
    gates: GateSettings = Field(default_factory=GateSettings, description="quality gate of shadow variants, per metric family")


class Limits(_Strict):
    max_upload_bytes: PositiveInt = Field(25 * 1024 * 1024, description="largest request body accepted")
    max_pixels: PositiveInt = Field(40_000_000, description="largest decoded image, width x height")
    max_images_per_request: PositiveInt = Field(
        4, le=64, description="largest n a request to a seeded (generative) style may ask for"
    )
    body_idle_timeout_s: PositiveFloat = Field(
        10.0, description="a request body that sends nothing for this long ends with 408 request_timeout"
    )
    max_uploads_per_client: PositiveInt = Field(
        64,
        description="request bodies one client address may have in flight on a router replica; more get 429 "
        "too_many_uploads (behind a proxy, set trusted_proxies so each client counts under its own address)",
    )
    max_uploads_in_flight: PositiveInt = Field(
        128,
        description="request bodies a router replica reads at once, all addresses together; a new one then takes the "
        "slot of the slowest body that is behind (408), or gets 503 uploads_busy with Retry-After when none is. "
        "Below router.max_ongoing_requests, so probes and GETs always find a slot",
    )
    min_body_bytes_per_s: float = Field(
        4096.0,
        ge=0.0,
        description="slowest request body accepted, averaged from its start: after body_rate_grace_s a body "
        "behind this rate ends with 408 request_timeout (0: no minimum, only body_idle_timeout_s)",
    )
    body_rate_grace_s: float = Field(
        10.0, ge=0.0, description="time a request body has before min_body_bytes_per_s applies (slow starts, TLS, mobile links)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks of the reverse proxies in front of the router; only behind one of "
        "them is client_address_header read, and the client is its right-most untrusted hop. Empty: the peer "
        "is the client, headers are ignored (loopback is not trusted either)",
    )
    client_address_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for",
        description="the header trusted_proxies write the client into: x-forwarded-for, or forwarded (RFC 7239 for=)",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is neither an IP address nor a CIDR network") from None
        return entries


class JobsConfig(_Strict):
    """Server-side batch jobs (``/v1/jobs``): where their state lives and how hard they may push."""

    storage: str = Field(
        ".stylefleet/jobs",
        description="folder or fsspec URI (s3://bucket/jobs, gs://...) for job inputs, outputs and state; "
        "a relative folder is taken from the directory the app is deployed from",
    )
    max_in_flight_per_job: PositiveInt = Field(
        4, description="items of one job dispatched to the model deployments at once; online traffic keeps the rest"
    )
    max_running_jobs: PositiveInt = Field(2, description="jobs one router replica runs at once; the others wait, queued")
    max_upload_bytes: PositiveInt = Field(1024**3, description="largest POST /v1/jobs body (images or archive)")
    max_items: PositiveInt = Field(10_000, description="most images (or archive members) in one job")
    max_archive_uncompressed_bytes: PositiveInt = Field(
        4 * 1024**3, description="most bytes an archive may expand to (sum of its members' sizes)"
    )
    item_retries: int = Field(5, ge=0, le=20, description="retries of an item the deployments answer overloaded/unavailable")
    lease_timeout_s: float = Field(
        30.0, gt=0.0, description="a job whose runner stopped renewing its lease this long is resumed by another router replica"
    )


class RouterConfig(_Strict):
    num_replicas: PositiveInt = 1
    max_ongoing_requests: PositiveInt = Field(256, description="concurrent HTTP requests one router replica holds")
    num_cpus: float = Field(0.0, ge=0.0, description="Ray CPUs reserved for the router (it mostly waits)")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources the router needs, e.g. {head: 0.001} with the head node started "
        "with resources {head: 1}, to keep routers beside the proxy (README, 'More than one machine')",
    )
    model_timeout_s: PositiveFloat = Field(
        100.0,
        description="longest wait for one model call (queue included) before 503 model_unavailable; keep it below "
        "http_options.request_timeout_s, so clients get the JSON error, not Serve's plain-text 408",
    )


class AppConfig(_Strict):
    """``applications[].args`` of serve_config.yaml."""

    limits: Limits = Field(default_factory=Limits)
    router: RouterConfig = Field(default_factory=RouterConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    model_dir: str | None = Field(None, description="folder searched for weight files before installed packages")
    allow_download: bool = Field(False, description="fetch a missing weight file from its upstream URL")
    models: dict[str, ModelSource] = Field(default_factory=dict)
    deployments: dict[str, DeploymentConfig]
    styles: dict[str, StyleConfig]

    @model_validator(mode="after")
    def _upload_share(self) -> AppConfig:
        if self.limits.max_uploads_in_flight >= self.router.max_ongoing_requests:
            raise ValueError(
                f"limits.max_uploads_in_flight ({self.limits.max_uploads_in_flight}) must be below "
                f"router.max_ongoing_requests ({self.router.max_ongoing_requests}), or slow uploads can hold every "
                "router slot and the health probes wait behind them (half of it is a good value)"
            )
        return self

    def model_spec(self, name: str) -> ModelSpec:
        """What building deployment ``name``'s model takes (``stylefleet.deployments.loader.load_model``)."""
        dep = self.deployments[name]
        return ModelSpec(
            deployment=name,
            model=dep.model,
            device=dep.device,
            precision=dep.precision,
            threads=dep.threads,
            num_gpus=dep.num_gpus,
            model_calls=dep.model_calls,
            lone_call=dep.lone_call,
            memory_budget_bytes=dep.memory_budget_bytes,
            memory_max_waiting=dep.memory_max_waiting,
            models=self.models,
            model_dir=self.model_dir,
            allow_download=self.allow_download,
            diffusion=dep.diffusion,
            uses={role: self.model_spec(target) for role, target in dep.uses.items()},
        )


class ModelSpec(_Strict):
    """One deployment's model as the loader builds it, wherever it runs (a Serve replica, a Ray
    Data actor, the benchmark): plain data, so it travels to actors as it is."""

    deployment: str = Field(description="the deployment's name (messages name its settings by it)")
    model: ModelName
    device: Device = "cpu"
    precision: Precision = "fp32"
    threads: PositiveInt | None = Field(1, description="intra-op threads per network call; None: every core")
    num_gpus: float = Field(0.0, ge=0.0)
    model_calls: PositiveInt | None = None
    lone_call: bool = True
    memory_budget_bytes: PositiveInt | None = Field(None, description="the deployment's; None: the kind's default")
    memory_max_waiting: int = Field(16, ge=0)
    models: dict[str, ModelSource] = Field(default_factory=dict, description="pinned paths and checksums, by file")
    model_dir: str | None = None
    allow_download: bool = False
    diffusion: DiffusionSource | None = None
    uses: dict[str, ModelSpec] = Field(default_factory=dict, description="composed kinds: each role's deployment")

    @property
    def setting(self) -> str:
        """Where this model's weights are set in serve_config.yaml (a diffusion deployment's messages)."""
        return f"deployments.{self.deployment}.diffusion"
