"""What the router does with a request, independent of HTTP and of Ray (both are injected).

- picks the variant (forced, sticky by client key, or random by weight: ``stylefleet.router.variants``);
- validates params and the uploads' headers, and dispatches the uploads, still encoded, to the
  variant's deployment (its replicas decode them: the data plane scales with model replicas);
- for a sampled share of traffic, also runs each shadow variant in the background, compares its
  result with the user's (by matte for cutouts, by image otherwise: ``stylefleet.router.shadow``)
  and records the figures and the quality gate's verdict; the user's response never waits for,
  or fails because of, shadow work;
- records per style and variant: requests by outcome, latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from stylefleet.compare import MatteDrift
from stylefleet.config import GateSettings, RouterSettings
from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, Reply
from stylefleet.deployments.log import serve_logger
from stylefleet.errors import InternalError, InvalidParams, StylefleetError
from stylefleet.imageio import probe
from stylefleet.router.catalog import Catalog, Style, seeded_params, split_count, split_params
from stylefleet.router.health import DeploymentState
from stylefleet.router.shadow import GAUGE, Key, ShadowReport, compare, expected_metric
from stylefleet.router.variants import choose_variant

logger = serve_logger(__name__)


class Backend(Protocol):
    """What the router needs from the cluster: run a request on a deployment, report health."""

    async def run(self, deployment: str, request: ModelRequest) -> Reply: ...

    async def health(self) -> dict[str, DeploymentState]: ...


class Recorder(Protocol):
    """Where figures go (Prometheus through ray.util.metrics in production, a list in tests)."""

    def request(self, style: str, variant: str, outcome: str, seconds: float) -> None: ...

    def shadow(self, style: str, primary: str, shadow: str, psnr_db: float, ssim: float, mad: float) -> None: ...

    def shadow_matte(self, style: str, primary: str, shadow: str, iou: float, alpha_mad: float, edge_error: float) -> None: ...

    def shadow_gate(self, style: str, primary: str, shadow: str, metric: str, value: int) -> None: ...


class NullRecorder:
    def request(self, style: str, variant: str, outcome: str, seconds: float) -> None:
        pass

    def shadow(self, style: str, primary: str, shadow: str, psnr_db: float, ssim: float, mad: float) -> None:
        pass

    def shadow_matte(self, style: str, primary: str, shadow: str, iou: float, alpha_mad: float, edge_error: float) -> None:
        pass

    def shadow_gate(self, style: str, primary: str, shadow: str, metric: str, value: int) -> None:
        pass


@dataclass(frozen=True)
class Traffic:
    """The live split: style -> variant -> weight, and style -> shadow variant -> percent."""

    weights: dict[str, dict[str, float]]
    shadows: dict[str, dict[str, float]]


def build_traffic(catalog: Catalog, settings: RouterSettings) -> Traffic:
    """Resolve ``RouterSettings`` against the catalogue. The settings come checked against the
    styles (``AppSpec.traffic_settings``, or the spec's own)."""
    weights: dict[str, dict[str, float]] = {}
    shadows: dict[str, dict[str, float]] = {}
    for style in catalog:
        name, known = style.name, set(style.variants)
        shadow = dict(settings.shadows.get(name, {}))
        if name in settings.splits:
            split = {v: settings.splits[name].get(v, 0.0) for v in known}
        else:
            live = [v for v in known if v not in shadow] or sorted(known)
            split = {v: (1.0 if v in live else 0.0) for v in known}
        weights[name] = split
        shadows[name] = {v: p for v, p in shadow.items() if p > 0}
    return Traffic(weights=weights, shadows=shadows)


@dataclass(frozen=True)
class Result:
    """``images``: one per image asked for (``n`` of a seeded style, else one); ``seeds`` the
    seed each was made with (None for unseeded kinds)."""

    images: tuple[EncodedImage, ...]
    seeds: tuple[int | None, ...]
    variant: str
    seconds: float

    @property
    def image(self) -> EncodedImage:
        return self.images[0]


class RouterCore:
    def __init__(
        self,
        catalog: Catalog,
        backend: Backend,
        *,
        max_pixels: int,
        recorder: Recorder | None = None,
        rng: random.Random | None = None,
        max_shadow_tasks: int = 32,
    ) -> None:
        self.catalog = catalog
        self.backend = backend
        self.max_pixels = max_pixels
        self.recorder = recorder or NullRecorder()
        self.rng = rng or random.Random()
        self.traffic = build_traffic(catalog, RouterSettings())
        self.gates = GateSettings()
        self._styles_json: tuple[Traffic, bytes] | None = None
        self.shadow_report = ShadowReport()
        self.max_shadow_tasks = max_shadow_tasks
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    def apply(self, settings: RouterSettings) -> None:
        """Swap in new weights and gates atomically (checked ones: ``AppSpec.traffic_settings``)."""
        self.traffic = build_traffic(self.catalog, settings)
        self.gates = settings.gates
        for key in list(self.shadow_report.sums):  # new thresholds may change a verdict
            self._record_gate(key)

    def describe_shadows(self) -> list[dict[str, Any]]:
        """``GET /v1/shadow``'s entries: each pair's figures and its gate under the live thresholds."""
        return self.shadow_report.describe(self.gates)

    def styles_json(self) -> bytes:
        """``{"styles": describe_styles()}`` as JSON, encoded once per traffic split: every client
        reads it first, and the split only changes through reconfigure."""
        traffic = self.traffic
        cached = self._styles_json
        if cached is None or cached[0] is not traffic:
            cached = (traffic, json.dumps({"styles": self.describe_styles()}).encode())
            self._styles_json = cached
        return cached[1]

    def describe_styles(self) -> list[dict[str, Any]]:
        traffic = self.traffic
        out = []
        for style in self.catalog:
            entry = style.describe()
            entry["variants"] = [
                {
                    "name": v.name,
                    "deployment": v.deployment,
                    "precision": v.precision,
                    "weight": traffic.weights[style.name][v.name],
                    "shadow_percent": traffic.shadows[style.name].get(v.name, 0.0),
                }
                for v in style.variants.values()
            ]
            out.append(entry)
        return out

    async def handle(
        self,
        style_name: str,
        files: Mapping[str, bytes],
        fields: dict[str, Any],
        *,
        client_key: str | None = None,
    ) -> Result:
        started = time.perf_counter()
        style = self.catalog.get(style_name)
        forced = _text(fields.pop("variant", None))
        fields.pop("client_id", None)
        traffic = self.traffic
        variant = choose_variant(style.name, traffic.weights[style.name], client_key=client_key, forced=forced, rng=self.rng)
        try:
            result = await self._run(style, variant, files, fields, traffic, started)
        except StylefleetError as exc:
            self.recorder.request(style.name, variant, exc.code, time.perf_counter() - started)
            exc.headers.setdefault("X-Stylefleet-Variant", variant)
            raise
        self.recorder.request(style.name, variant, "ok", result.seconds)
        return result

    def check(
        self, style_name: str, fields: dict[str, Any], file_names: list[str], *, client_key: str | None = None
    ) -> tuple[Style, str]:
        """Validate a request without running it (404 unknown style, 422 bad variant, files or
        params) and pick its variant; pops ``variant`` and ``client_id`` from ``fields`` as
        ``handle`` does. Batch jobs call it so a bad job is refused before it is accepted."""
        style = self.catalog.get(style_name)
        forced = _text(fields.pop("variant", None))
        fields.pop("client_id", None)
        variant = choose_variant(style.name, self.traffic.weights[style.name], client_key=client_key, forced=forced, rng=self.rng)
        _check_files(style, dict.fromkeys(file_names, b""))
        rest, count = split_count(style, dict(fields))
        if count != 1:
            raise InvalidParams("n: a batch job makes one image per input; leave n out")
        split_params(style, style.variant(variant), rest)
        return style, variant

    async def _run(
        self, style: Style, variant: str, files: Mapping[str, bytes], fields: dict[str, Any], traffic: Traffic, started: float
    ) -> Result:
        _check_files(style, files)
        fields, count = split_count(style, fields)
        params, output = split_params(style, style.variant(variant), fields)
        _probe_all(files, self.max_pixels)  # headers only: bad files fail here, without a hop
        # n > 1 (seeded styles) is compared by no shadow: one image per request is what drift measures.
        shadows = [
            v for v, pct in traffic.shadows[style.name].items() if v != variant and count == 1 and self.rng.random() * 100 < pct
        ]
        deployment = style.variant(variant).deployment
        each = seeded_params(params, count)  # seeds seed, seed+1, ...: image i is the one seed+i gives alone
        replies = await asyncio.gather(
            *(self.backend.run(deployment, _request(files, p, output, self.max_pixels, keep_pixels=bool(shadows))) for p in each)
        )
        encoded = [_encoded(reply, deployment) for reply in replies]
        seconds = time.perf_counter() - started
        reply = encoded[0]
        if shadows and reply.pixels is not None:
            for shadow in shadows:
                self._start_shadow(style, variant, shadow, files, fields, reply.pixels)
            encoded[0] = replace(reply, pixels=None)
        seeds = tuple(p.get("seed") for p in each)
        return Result(images=tuple(encoded), seeds=seeds, variant=variant, seconds=seconds)

    def _start_shadow(
        self, style: Style, primary: str, shadow: str, files: Mapping[str, bytes], fields: dict[str, Any], reference: np.ndarray
    ) -> None:
        if len(self._shadow_tasks) >= self.max_shadow_tasks:
            return  # shadow work is best effort: never let it pile up behind real traffic
        task = asyncio.create_task(self._shadow(style, primary, shadow, files, dict(fields), reference))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, style: Style, primary: str, shadow: str, files: Mapping[str, bytes], fields: dict[str, Any], reference: np.ndarray
    ) -> None:
        pair = (style.name, primary, shadow)
        # The primary's request already passed these same fields: this cannot raise.
        primary_mask = bool(split_params(style, style.variant(primary), fields)[0].get("only_mask"))
        try:
            params, _ = split_params(style, style.variant(shadow), fields)
            reply = await self.backend.run(style.variant(shadow).deployment, _request(files, params, None, self.max_pixels))
            if not isinstance(reply, np.ndarray):
                raise RuntimeError(f"shadow returned {type(reply).__name__}: {reply}")
            shadow_mask = bool(params.get("only_mask"))
            d = await asyncio.to_thread(
                compare, style.task, reference, reply, reference_only_mask=primary_mask, candidate_only_mask=shadow_mask
            )
        except Exception as exc:  # noqa: BLE001 - shadow failures are recorded, never raised
            logger.warning("shadow %s failed: %s", pair, exc)
            self.shadow_report.fail(pair, expected_metric(style.task, reference, primary_mask))
            return
        key = self.shadow_report.add(pair, d)
        if isinstance(d, MatteDrift):
            self.recorder.shadow_matte(*pair, d.iou, d.mean_abs_alpha_diff, d.edge_error)
        else:
            self.recorder.shadow(*pair, d.psnr_db, d.ssim, d.mean_abs_diff)
        self._record_gate(key)

    def _record_gate(self, key: Key) -> None:
        verdict = self.shadow_report.gate(key, self.gates)["verdict"]
        self.recorder.shadow_gate(*key, GAUGE[verdict])

    async def drain_shadows(self) -> None:
        """Wait for shadow work in flight (tests and shutdown)."""
        while self._shadow_tasks:
            await asyncio.gather(*list(self._shadow_tasks), return_exceptions=True)


def _text(value: Any) -> str | None:
    """A form field is a string; the same field in a JSON body may be a number."""
    return None if value is None else str(value)


def _encoded(reply: Reply, deployment: str) -> EncodedImage:
    if isinstance(reply, StylefleetError):
        raise reply
    if not isinstance(reply, EncodedImage):
        raise InternalError(f"deployment {deployment} returned {type(reply).__name__}")
    return reply


def _check_files(style: Style, files: Mapping[str, bytes]) -> None:
    unexpected = set(files) - set(style.image_fields)
    if unexpected:
        takes = f"it takes {', '.join(style.image_fields)}" if style.image_fields else "it takes no file"
        raise InvalidParams(f"{', '.join(sorted(unexpected))}: not a file this style takes ({takes})")
    missing = [f for f in style.image_fields if f not in files]
    if missing:
        raise InvalidParams(f"the '{missing[0]}' file is required (multipart/form-data)")


def _probe_all(files: Mapping[str, bytes], max_pixels: int) -> None:
    for name, data in files.items():
        probe(data, max_pixels=max_pixels, field=name)


def _request(
    files: Mapping[str, bytes], params: dict[str, Any], output: OutputSpec | None, max_pixels: int, *, keep_pixels: bool = False
) -> ModelRequest:
    """The uploads go to the model's replica as they came: it decodes them (``stylefleet.deployments.batching``)."""
    return ModelRequest({}, params, output, keep_pixels=keep_pixels, files=dict(files), max_pixels=max_pixels)
