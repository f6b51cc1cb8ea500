"""The ``ray-data`` engine: the same run as the HTTP engine, as a Ray Data pipeline.

Two stages, ``map_batches`` both:

1. ``read_and_check`` (light tasks): read each input (local path or URI), hash it, and turn the
   items the manifest already lists as done into pass-through rows;
2. ``StyleActor`` (an actor pool sized like the style's deployment: its ``num_cpus``,
   ``num_gpus``, ONNX threads, ``min``/``max_replicas``, ``max_batch_size``): decode as the router
   does (``stylefleet.imageio.decode``), check params as the router does (``split_params``), then
   ``run_batch`` + ``encode_outcomes``, the very functions the deployments call, and write each
   output atomically. Models give the same bytes alone or in a batch, so the outputs equal the
   HTTP engine's byte for byte.

Prompt lists (text-to-image styles) take the same path: a row carries the line's completed
params instead of a file (``stylefleet.prompts``), and the actor sends no image.

The driver writes the manifest as rows come back, so an interrupted run resumes like an HTTP one.
Ray: the running one if this process already joined it, else ``RAY_ADDRESS``, else a local
loopback-only Ray (as ``stylefleet run`` starts) that is stopped at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import replace
from typing import Any

import numpy as np
import yaml

from stylefleet.batch.inputs import read_source
from stylefleet.batch.run import Plan, Tally, UsageError
from stylefleet.errors import InvalidPromptLine
from stylefleet.manifest import ManifestIndex, Record, sha256_hex
from stylefleet.storage import Storage

logger = logging.getLogger("stylefleet.batch")


def load_app(config_path: str) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The serve config's AppConfig and each deployment's ``user_config`` (batching, A/B split)."""
    from stylefleet.config import AppConfig

    try:
        with open(config_path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise UsageError(f"--config: {exc}") from None
    app = doc["applications"][0]
    user_configs = {d["name"]: d.get("user_config") or {} for d in app.get("deployments", [])}
    return AppConfig.model_validate(app.get("args", {})), user_configs


def describe_style(config_path: str, style: str) -> dict[str, Any]:
    """The style as the service's GET /v1/styles would describe it, from the config alone."""
    from router.catalog import Catalog
    from stylefleet.errors import StylefleetError

    config, _ = load_app(config_path)
    try:
        return Catalog(config).get(style).describe()
    except StylefleetError as exc:
        raise UsageError(f"{exc.code}: {exc.message}") from None


def run_ray_data(plan: Plan, out: Storage, index: ManifestIndex, tally: Tally, *, config_path: str) -> None:
    import ray

    from router.catalog import Catalog
    from router.core import build_traffic
    from router.variants import choose_variant
    from stylefleet.config import BatchingConfig, RouterSettings
    from stylefleet.errors import StylefleetError

    config, user_configs = load_app(config_path)
    catalog = Catalog(config)
    try:
        style = catalog.get(plan.style)
        traffic = build_traffic(catalog, RouterSettings.model_validate(user_configs.get("router", {})))
        fields = dict(plan.fields)
        forced, client_key = fields.pop("variant", None), fields.pop("client_id", None)
        rng = random.Random()
        chosen = [choose_variant(style.name, traffic.weights[style.name], client_key=client_key, forced=forced, rng=rng) for _ in plan.items]
        from router.catalog import split_params

        for v in set(chosen):
            split_params(style, style.variant(v), dict(fields))
        unexpected = set(plan.extra_files) - set(style.image_fields)
        if unexpected or set(style.image_fields) - {"image"} - set(plan.extra_files):
            raise UsageError(f"style {style.name!r} takes the files {', '.join(style.image_fields)}")
    except StylefleetError as exc:
        raise UsageError(f"{exc.code}: {exc.message}") from None

    done = _done_records(plan, out, index)
    started_here = _connect(ray)
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        by_deployment: dict[str, list[int]] = {}
        for i, v in enumerate(chosen):
            by_deployment.setdefault(style.variant(v).deployment, []).append(i)
        for deployment, members in by_deployment.items():
            dep = config.deployments[deployment]
            batching = BatchingConfig.model_validate(user_configs.get(deployment, {}))
            rows = [_row(plan, plan.items[i], chosen[i]) for i in members]
            _run_pipeline(ray, rows, plan, out, done, style.name, fields, config, deployment, dep, batching.max_batch_size, tally)
    finally:
        if started_here is not None:
            started_here.stop()


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


def _connect(ray: Any) -> Any:
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return None
    from stylefleet.local import LocalCluster

    cluster = LocalCluster(include_dashboard=False, log_to_driver=False)
    cluster.start()
    return cluster


def _run_pipeline(
    ray: Any, rows: list[dict[str, Any]], plan: Plan, out: Storage, done: dict[str, str], style: str,
    fields: dict[str, str], config: Any, deployment: str, dep: Any, batch_size: int, tally: Tally,
) -> None:
    import ray.data

    base = {"style": plan.style}
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), math.ceil(len(rows) / batch_size))))
    ds = ds.map_batches(
        read_and_check, fn_kwargs={"done": done, "base": base}, batch_size=batch_size, batch_format="numpy", num_cpus=0.25,
    )
    ds = ds.map_batches(
        StyleActor,
        fn_constructor_kwargs={
            "kind": dep.model, "device": dep.device, "threads": dep.threads, "num_gpus": dep.num_gpus,
            "model_paths": {f: (config.models[f].path if f in config.models else None) for f in _kind_files(dep.model)},
            "model_dir": config.model_dir, "allow_download": config.allow_download,
            # as router.app gives ModelServer: where a diffusion deployment's weights are
            "options": {"diffusion": dep.diffusion.model_dump(), "setting": f"deployments.{deployment}.diffusion"} if dep.diffusion else {},
            "app_config": config.model_dump(), "style": style, "fields": fields, "extra_files": plan.extra_files,
            "out_uri": out.uri, "base": base,
        },
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=dep.num_cpus,
        num_gpus=dep.num_gpus or None,
        concurrency=(max(1, dep.autoscaling.min_replicas), max(1, dep.autoscaling.max_replicas)),
    )
    logger.info("ray-data: %d items on %s (batch %d, %g CPU per actor)", len(rows), deployment, batch_size, dep.num_cpus)
    for row in ds.iter_rows():
        record = Record.from_dict(json.loads(row["record"]))
        if bool(row["skipped"]):
            tally.skipped(record)
        else:
            tally.finished(record)


def _kind_files(kind: str) -> tuple[str, ...]:
    from deployments.kinds import KINDS

    return KINDS[kind].files


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
                records[j] = Record(input_sha256="", **record, error={"code": "unreadable_input", "message": str(exc)}).to_json()  # type: ignore[arg-type]
                continue
            shas[j] = sha256_hex(blob)
        data[j] = blob
        records[j] = done.get(f"{rel}\0{shas[j]}\0{batch['params'][j]}", "")
        skipped[j] = bool(records[j])
        if skipped[j]:
            data[j] = b""
        elif batch["prompt_error"][j]:
            error = {"code": InvalidPromptLine.code, "message": str(batch["prompt_error"][j])}
            records[j] = Record(input_sha256=shas[j], **record, error=error).to_json()  # type: ignore[arg-type]
    return {**batch, "data": data, "sha256": shas, "record": records, "skipped": skipped}


def _seed(params: dict[str, Any]) -> str | None:
    """The seed as the HTTP engine records it (the X-Stylefleet-Seed header's text)."""
    return None if params.get("seed") is None else str(params["seed"])


class StyleActor:
    """One model per actor, loaded once; each call is one batch through the deployments' own
    pure functions (``run_batch``, ``encode_outcomes``)."""

    def __init__(
        self, *, kind: str, device: str, threads: int, num_gpus: float, model_paths: dict[str, str | None],
        model_dir: str | None, allow_download: bool, app_config: dict[str, Any], style: str, fields: dict[str, str],
        extra_files: dict[str, bytes], out_uri: str, base: dict[str, Any], options: dict[str, Any] | None = None,
    ) -> None:
        from deployments.kinds import KINDS
        from deployments.onnx_session import RuntimeOptions
        from deployments.registry import resolve
        from router.catalog import Catalog
        from stylefleet.config import AppConfig

        runtime = RuntimeOptions(device=device, threads=threads)  # type: ignore[arg-type]
        if device == "cuda" and num_gpus > 0:
            from stylefleet.gpu import Nvml, memory_cap_bytes

            nvml = Nvml.open(runtime.gpu_device_id)
            if nvml is not None:  # as ModelServer: without NVML, ONNX Runtime's own arena limits apply
                runtime = replace(runtime, gpu_mem_limit_bytes=memory_cap_bytes(num_gpus, nvml.total_memory_bytes()))
        self.kind = KINDS[kind]
        files = [resolve(n, path=model_paths.get(n), model_dir=model_dir, allow_download=allow_download) for n in self.kind.files]
        self.model = self.kind.factory(files, runtime, {**(options or {}), "allow_download": allow_download})
        # as ModelServer reports it: the files' checksums, or the model's own (diffusion folders)
        self.model_sha256 = "+".join(f.sha256 for f in files) if files else str(getattr(self.model, "checksum", ""))
        config = AppConfig.model_validate(app_config)
        self.max_pixels = config.limits.max_pixels
        self.style = Catalog(config).get(style)
        self.fields = fields
        self.extra_files = extra_files
        self.out = Storage(out_uri)
        self.base = base

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from deployments.batching import EncodedImage, ModelRequest, encode_outcomes, run_batch
        from router.catalog import split_params
        from stylefleet.errors import StylefleetError
        from stylefleet.imageio import decode

        n = len(batch["rel"])
        records = list(batch["record"])
        todo: list[tuple[int, ModelRequest]] = []
        for j in range(n):
            if records[j]:
                continue
            own = json.loads(str(batch["prompt_fields"][j])) if batch["prompt_fields"][j] else None
            try:
                files = {**({} if own is not None else {"image": bytes(batch["data"][j])}), **self.extra_files}
                images = {name: decode(blob, max_pixels=self.max_pixels, field=name).pixels for name, blob in files.items()}
                params, output = split_params(self.style, self.style.variant(str(batch["variant"][j])), {**self.fields, **(own or {})})
            except StylefleetError as exc:
                records[j] = self._record(batch, j, status="failed", error={"code": exc.code, "message": exc.message})
                continue
            todo.append((j, ModelRequest(images, params, output)))
        requests = [r for _, r in todo]
        for (j, request), reply in zip(todo, encode_outcomes(requests, run_batch(self.model, requests), self.model_sha256)):
            if isinstance(reply, EncodedImage):
                target = str(batch["output"][j])
                self.out.write_bytes(target, reply.data)
                records[j] = self._record(batch, j, status="ok", output=target, model_sha256=reply.model_sha256,
                                          seed=_seed(request.params), nsfw=reply.nsfw)
            else:
                err = reply if isinstance(reply, StylefleetError) else None
                records[j] = self._record(batch, j, status="failed",
                                          error={"code": err.code if err else "internal_error", "message": err.message if err else str(reply)})
        return {"record": np.array(records, dtype=object), "skipped": batch["skipped"]}

    def _record(self, batch: dict[str, np.ndarray], j: int, **kwargs: Any) -> str:
        return Record(input=str(batch["rel"][j]), input_sha256=str(batch["sha256"][j]), variant=str(batch["variant"][j]),
                      params=json.loads(str(batch["params"][j])), **self.base, **kwargs).to_json()
