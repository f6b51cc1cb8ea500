"""The typed application config: the ``args`` of ``serve_config.yaml``, validated at deploy time.

Every knob has a default and a description here; the README's knob table is written from this
file. A bad value fails ``serve run``/``serve deploy`` with a message naming the field, never at
the first request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from deployments.onnx_session import Device


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingConfig(_Strict):
    """A model deployment's ``user_config``: batching, changed live through ``reconfigure``.

    It lives in serve_config.yaml's ``deployments: [{name, user_config}]`` section, not in
    ``args``: Serve applies a changed ``user_config`` there to running replicas, whereas any
    change to ``args`` rebuilds the app and restarts every replica.
    """

    max_batch_size: PositiveInt = Field(8, le=256, description="most requests coalesced into one batch")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, le=10.0, description="how long a batch waits to fill after its first request"
    )


ModelName = Literal[
    "multistyle26",
    "arbitrary",
    "u2netp",
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


class DeploymentConfig(_Strict):
    """One model deployment (one model, its replicas and batching)."""

    model: ModelName = Field(description="which model this deployment serves")
    num_replicas: PositiveInt = 1
    max_ongoing_requests: PositiveInt = Field(16, description="requests a replica holds at once; >= max_batch_size")
    max_queued_requests: int = Field(
        64, ge=-1, description="requests waiting for a replica before callers get 503 overloaded (-1: no bound)"
    )
    num_cpus: PositiveFloat = Field(1.0, description="Ray CPUs reserved per replica")
    threads: PositiveInt | None = Field(
        None, description="ONNX Runtime intra-op threads; default: the replica's CPU share, at least 1"
    )
    device: Device = Field("cpu", description="cpu or cuda")
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="Ray GPU share per replica (logical only)")
    diffusion: DiffusionSource | None = Field(None, description="weights and knobs of a stable-diffusion deployment")

    @model_validator(mode="after")
    def _batch_fits(self) -> DeploymentConfig:
        default_batch = BatchingConfig().max_batch_size
        if self.max_ongoing_requests < default_batch:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least the default "
                f"max_batch_size ({default_batch}), or batches can never fill"
            )
        if self.device == "cuda" and self.num_gpus <= 0:
            raise ValueError("device: cuda needs num_gpus > 0")
        if (self.model == "stable-diffusion") != (self.diffusion is not None):
            raise ValueError("diffusion: needed by model stable-diffusion (diffusion.model names the weights), and only by it")
        return self

    @property
    def effective_threads(self) -> int:
        return self.threads or max(1, int(self.num_cpus))


def check_batch_fits(batching: BatchingConfig, max_ongoing_requests: int) -> None:
    """A replica never holds more than max_ongoing_requests, so a bigger batch could never form."""
    if batching.max_batch_size > max_ongoing_requests:
        raise ValueError(
            f"user_config.max_batch_size ({batching.max_batch_size}) is above this deployment's "
            f"max_ongoing_requests ({max_ongoing_requests}): batches could never fill"
        )


class ModelSource(_Strict):
    path: str | None = Field(None, description="a local copy of the weight file (checksum still verified)")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="the file's sha256, pinned here where the registry has none (AnimeGANv2) or to accept another version",
    )


class StyleConfig(_Strict):
    """A style: a name clients use, bound to a deployment and the params it fixes."""

    deployment: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict, description="fixed params; clients cannot override them")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="this style's defaults for params clients may set (a preset's prompt, seed, steps)"
    )

    @model_validator(mode="after")
    def _defaults_are_not_fixed(self) -> StyleConfig:
        both = set(self.params) & set(self.defaults)
        if both:
            raise ValueError(f"defaults: {', '.join(sorted(both))} also fixed in params; a param is either fixed or a default")
        return self


class Limits(_Strict):
    max_upload_bytes: PositiveInt = Field(25 * 1024 * 1024, description="largest request body accepted")
    max_pixels: PositiveInt = Field(40_000_000, description="largest decoded image, width x height")
    max_images_per_request: PositiveInt = Field(
        4, le=64, description="largest n a request to a seeded (generative) style may ask for"
    )


class RouterConfig(_Strict):
    num_replicas: PositiveInt = 1
    max_ongoing_requests: PositiveInt = Field(256, description="concurrent HTTP requests one router replica holds")
    num_cpus: float = Field(0.0, ge=0.0, description="Ray CPUs reserved for the router (it mostly waits)")


class AppConfig(_Strict):
    """``applications[].args`` of serve_config.yaml."""

    limits: Limits = Field(default_factory=Limits)
    router: RouterConfig = Field(default_factory=RouterConfig)
    model_dir: str | None = Field(None, description="folder searched for weight files before installed packages")
    allow_download: bool = Field(False, description="fetch a missing weight file from its upstream URL")
    models: dict[str, ModelSource] = Field(default_factory=dict)
    deployments: dict[str, DeploymentConfig]
    styles: dict[str, StyleConfig]

    @model_validator(mode="after")
    def _references(self) -> AppConfig:
        for name, style in self.styles.items():
            if style.deployment not in self.deployments:
                raise ValueError(
                    f"styles.{name}.deployment: {style.deployment!r} is not one of deployments "
                    f"{sorted(self.deployments)}"
                )
        from deployments.registry import MODELS

        for name in self.models:
            if name not in MODELS:
                raise ValueError(f"models.{name}: unknown model; known: {sorted(MODELS)}")
        if not self.styles:
            raise ValueError("styles: at least one style is needed")
        return self
