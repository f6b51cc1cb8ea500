"""The ``ray-data`` engine: the same run as the HTTP engine, as a Ray Data pipeline.

Two stages, ``map_batches`` both:

1. ``read_and_check`` (light tasks): read each input (local path or URI), hash it, and turn the
   items the manifest already lists as done into pass-through rows;
2. ``StyleActor`` (an actor pool sized like the style's deployment: its ``num_cpus``,
   ``num_gpus``, ``min``/``max_replicas``, ``max_batch_size``): loads the deployment's model with
   the loader every Serve replica uses (``stylefleet.deployments.loader``: pinned checksums, options,
   threads, GPU caps), checks params as the router does (``split_params``), sends the uploads
   as the router does (encoded, decoded by the model's own ``decoded``), then runs the very
   functions the deployments run: ``run_batch`` + ``encode_outcomes``, or for a composed kind
   (id-photo) ``run_composed`` with the deployments it uses loaded in the same actor. Each
   output is written atomically. Models give the same bytes alone or in a batch, so the outputs
   equal the HTTP engine's byte for byte, and the records carry the same seeds.

Prompt lists (text-to-image styles) take the same path: a row carries the line's completed
params instead of a file (``stylefleet.prompts``), and the actor sends no image.

The config is read once, through the app spec (``stylefleet.spec``), as ``stylefleet run`` reads
it. The driver writes the manifest as rows come back, so an interrupted run resumes like an HTTP
one. Ray: the running one if this process already joined it, else ``RAY_ADDRESS``, else a local
loopback-only Ray (as ``stylefleet run`` starts) that is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import shutil
from typing import Any

import numpy as np
import ray
import ray.data

from stylefleet.config import ModelSpec
from stylefleet.deployments.batching import EncodedImage, ModelRequest, Reply, encode_outcomes, run_batch
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.loader import load_model
from stylefleet.errors import InsufficientStorage, InvalidParams, InvalidPromptLine, StylefleetError
from stylefleet.imageio import probe
from stylefleet.manifest import ManifestIndex, Record, sha256_hex
from stylefleet.router.catalog import Catalog, Style, split_params
from stylefleet.router.core import build_traffic
from stylefleet.router.variants import choose_variant
from stylefleet.spec import AppSpec, ConfigError, load_serve_file
from stylefleet.storage import Storage
from stylefleet.tools.batch.inputs import read_source
from stylefleet.tools.batch.plan import Plan, Tally, UsageError
from stylefleet.tools.local import LocalCluster

logger = logging.getLogger("stylefleet.tools.batch")


def load_app(config_path: str) -> AppSpec:
    """The config's app spec (checked as a whole); a bad or missing file is a usage error."""
    try:
        return load_serve_file(config_path).app
    except ConfigError as exc:
        raise UsageError(f"--config {config_path}: {exc}") from None


def describe_style(config_path: str, style: str) -> dict[str, Any]:
    """The style as the service's GET /v1/styles would describe it, from the config alone."""
    try:
        return Catalog(load_app(config_path)).get(style).describe()
    except StylefleetError as exc:
        raise UsageError(f"{exc.code}: {exc.message}") from None


def run_ray_data(plan: Plan, out: Storage, index: ManifestIndex, tally: Tally, *, config_path: str) -> None:
    spec = load_app(config_path)
    style, chosen, fields = _choose_variants(spec, plan)
    done = _done_records(plan, out, index)
    started_here = _connect()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        by_deployment: dict[str, list[int]] = {}
        for i, v in enumerate(chosen):
            by_deployment.setdefault(style.variant(v).deployment, []).append(i)
        for deployment, members in by_deployment.items():
            rows = [_row(plan, plan.items[i], chosen[i]) for i in members]
            _run_pipeline(rows, plan, out, done, style.name, fields, spec, deployment, tally)
    finally:
        if started_here is not None:
            started_here.stop()
            shutil.rmtree(started_here.state_dir, ignore_errors=True)  # the temporary one it made itself


def _choose_variants(spec: AppSpec, plan: Plan) -> tuple[Style, list[str], dict[str, str]]:
    """The style, each item's variant (as the router picks it: the live split of the config),
    and the run's fields without ``variant``/``client_id``; bad params are usage errors here."""
    catalog = Catalog(spec)
    try:
        style = catalog.get(plan.style)
        traffic = build_traffic(catalog, spec.traffic)
        fields = dict(plan.fields)
        forced, client_key = fields.pop("variant", None), fields.pop("client_id", None)
        rng = random.Random()
        chosen = [
            choose_variant(style.name, traffic.weights[style.name], client_key=client_key, forced=forced, rng=rng) for _ in plan.items
        ]
        for v in set(chosen):
            split_params(style, style.variant(v), dict(fields))
    except StylefleetError as exc:
        raise UsageError(f"{exc.code}: {exc.message}") from None
    unexpected = set(plan.extra_files) - set(style.image_fields)
    if unexpected or set(style.image_fields) - {"image"} - set(plan.extra_files):
        raise UsageError(f"style {style.name!r} takes the files {', '.join(style.image_fields)}")
    return style, chosen, fields


def _row(plan: Plan, item: Any, variant: str) -> dict[str, Any]:
    prompt = item.prompt
    return {
        "rel": item.rel,
        "source": item.source,
        "output": plan.outputs[item.rel],
        "variant": variant,
        "params": json.dumps(plan.params_of(item), sort_keys=True),  # the record's params (and resume key's)
        "prompt_fields": json.dumps(prompt.fields) if prompt else "",  # a prompt line: sent instead of a file
        "prompt_text": prompt.text if prompt else "",
        "prompt_error": (prompt.error or "") if prompt else "",
    }


def _done_records(plan: Plan, out: Storage, index: ManifestIndex) -> dict[str, str]:
    """``rel/sha256/params`` -> the record (JSON) that makes the item done, for this style."""
    if plan.force:
        return {}
    done = {}
    for (rel, sha, style, params), _ in index.latest.items():
        if style == plan.style:
            record = index.done((rel, sha, style, params), out)
            if record is not None:
                done[f"{rel}\0{sha}\0{params}"] = record.to_json()
    return done


def _connect() -> LocalCluster | None:
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return None
    cluster = LocalCluster(include_dashboard=False, log_to_driver=False)
    cluster.start()
    return cluster


def actor_resources(spec: AppSpec, deployment: str) -> tuple[float, float]:
    """(CPUs, GPUs) one actor reserves: the deployment's share, plus those of the deployments a
    composed kind uses (the actor runs their models itself)."""
    deps = [spec.deployments[deployment], *(spec.deployments[t] for t in spec.deployments[deployment].uses.values())]
    return sum(d.num_cpus for d in deps), sum(d.num_gpus for d in deps)


def _run_pipeline(
    rows: list[dict[str, Any]],
    plan: Plan,
    out: Storage,
    done: dict[str, str],
    style: str,
    fields: dict[str, str],
    spec: AppSpec,
    deployment: str,
    tally: Tally,
) -> None:
    dep = spec.deployments[deployment]
    batch_size = spec.batching_of(deployment).max_batch_size
    num_cpus, num_gpus = actor_resources(spec, deployment)
    base = {"style": plan.style}
    ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), math.ceil(len(rows) / batch_size))))
    ds = ds.map_batches(
        read_and_check,  # type: ignore[arg-type]  # Ray's UDF type has no keyword-only arguments
        fn_kwargs={"done": done, "base": base},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=0.25,
    )
    ds = ds.map_batches(
        StyleActor,
        fn_constructor_kwargs={
            "model": spec.model_spec(deployment),
            "app": spec,
            "style": style,
            "fields": fields,
            "extra_files": plan.extra_files,
            "out_uri": out.uri,
            "base": base,
        },
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        concurrency=(max(1, dep.autoscaling.min_replicas), max(1, dep.autoscaling.max_replicas)),
    )
    logger.info("ray-data: %d items on %s (batch %d, %g CPU per actor)", len(rows), deployment, batch_size, num_cpus)
    for row in ds.iter_rows():
        record = Record.from_dict(json.loads(row["record"]))
        if bool(row["skipped"]):
            tally.skipped(record)
        else:
            tally.finished(record)


def read_and_check(batch: dict[str, np.ndarray], *, done: dict[str, str], base: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read and hash each input. Items the manifest lists as done become pass-through rows
    (``skipped``, with their old record); an unreadable input gets its failure record here."""
    n = len(batch["rel"])
    data, shas, records = np.empty(n, dtype=object), np.empty(n, dtype=object), np.empty(n, dtype=object)
    skipped = np.zeros(n, dtype=bool)
    for j in range(n):
        rel, params = str(batch["rel"][j]), json.loads(str(batch["params"][j]))
        record = dict(input=rel, **base, params=params, status="failed", variant=str(batch["variant"][j]))
        if batch["prompt_fields"][j]:
            blob = b""
            shas[j] = sha256_hex(str(batch["prompt_text"][j]).encode())
        else:
            try:
                blob = read_source(str(batch["source"][j]))
            except OSError as exc:
                data[j], shas[j] = b"", ""
                records[j] = Record(input_sha256="", **record, error={"code": "unreadable_input", "message": str(exc)}).to_json()
                continue
            shas[j] = sha256_hex(blob)
        data[j] = blob
        records[j] = done.get(f"{rel}\0{shas[j]}\0{batch['params'][j]}", "")
        skipped[j] = bool(records[j])
        if skipped[j]:
            data[j] = b""
        elif batch["prompt_error"][j]:
            error = {"code": InvalidPromptLine.code, "message": str(batch["prompt_error"][j])}
            records[j] = Record(input_sha256=shas[j], **record, error=error).to_json()
    return {**batch, "data": data, "sha256": shas, "record": records, "skipped": skipped}


def _seed(params: dict[str, Any]) -> str | None:
    """The seed as the HTTP engine records it (the X-Stylefleet-Seed header's text)."""
    return None if params.get("seed") is None else str(params["seed"])


class StyleActor:
    """One model per actor, loaded once by the deployments' loader; each call is one batch
    through the deployments' own pure functions."""

    def __init__(
        self,
        *,
        model: ModelSpec,
        app: AppSpec,
        style: str,
        fields: dict[str, str],
        extra_files: dict[str, bytes],
        out_uri: str,
        base: dict[str, Any],
    ) -> None:
        loaded = load_model(model)
        self.model = loaded.model
        self.model_sha256 = loaded.model_sha256
        # a composed kind's roles: the models of the deployments it uses, in this actor
        self.used = {role: load_model(used).model for role, used in model.uses.items()}
        self.max_pixels = app.args.limits.max_pixels
        self.style = Catalog(app).get(style)
        self.fields = fields
        self.extra_files = extra_files
        self.out = Storage(out_uri)
        self.base = base

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["rel"])
        records = list(batch["record"])
        todo: list[tuple[int, ModelRequest]] = []
        for j in range(n):
            if records[j]:
                continue
            try:
                todo.append((j, self._request(batch, j)))
            except StylefleetError as exc:
                records[j] = self._record(batch, j, status="failed", error={"code": exc.code, "message": exc.message})
        requests = [r for _, r in todo]
        for (j, request), reply in zip(todo, self._run(requests)):
            records[j] = self._finished(batch, j, request, reply)
        return {"record": np.array(records, dtype=object), "skipped": batch["skipped"]}

    def _request(self, batch: dict[str, np.ndarray], j: int) -> ModelRequest:
        """The request the router would send for row ``j``: params checked, uploads as they came."""
        own = json.loads(str(batch["prompt_fields"][j])) if batch["prompt_fields"][j] else None
        files = {**({} if own is not None else {"image": bytes(batch["data"][j])}), **self.extra_files}
        params, output = split_params(self.style, self.style.variant(str(batch["variant"][j])), {**self.fields, **(own or {})})
        missing = [f for f in self.style.image_fields if f not in files]
        if missing:
            raise InvalidParams(f"the '{missing[0]}' file is required (multipart/form-data)")
        for name, data in files.items():
            probe(data, max_pixels=self.max_pixels, field=name)
        return ModelRequest({}, params, output, files=files, max_pixels=self.max_pixels)

    def _run(self, requests: list[ModelRequest]) -> list[Reply]:
        if not requests:
            return []
        if self.used:
            return asyncio.run(run_composed(self.model, requests, self._call, StageClock(), self.model_sha256))
        return encode_outcomes(requests, run_batch(self.model, requests), self.model_sha256)

    async def _call(self, role: str, request: ModelRequest) -> Reply:
        """A composed kind's sub-request, run by the role's model here as its deployment runs it."""
        [reply] = encode_outcomes([request], run_batch(self.used[role], [request]), "")
        return reply

    def _finished(self, batch: dict[str, np.ndarray], j: int, request: ModelRequest, reply: Reply) -> str:
        if isinstance(reply, EncodedImage):
            target = str(batch["output"][j])
            try:
                self.out.write_bytes(target, reply.data)
            except InsufficientStorage as exc:  # the driver stops the run (exit status 3) when it reads this
                return self._record(batch, j, status="failed", error={"code": exc.code, "message": exc.message})
            return self._record(
                batch, j, status="ok", output=target, model_sha256=reply.model_sha256, seed=_seed(request.params), nsfw=reply.nsfw,
                checks=reply.checks,
            )
        err = reply if isinstance(reply, StylefleetError) else None
        return self._record(
            batch, j, status="failed", error={"code": err.code if err else "internal_error", "message": err.message if err else str(reply)}
        )

    def _record(self, batch: dict[str, np.ndarray], j: int, **kwargs: Any) -> str:
        return Record(
            input=str(batch["rel"][j]),
            input_sha256=str(batch["sha256"][j]),
            variant=str(batch["variant"][j]),
            params=json.loads(str(batch["params"][j])),
            **self.base,
            **kwargs,
        ).to_json()
