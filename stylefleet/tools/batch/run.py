"""``stylefleet batch``: plan the run, resume from the manifest, drive an engine, summarise.

INPUT is images (a folder or a list of files) for styles that take an image, and a prompt list
(``stylefleet.prompts``: one prompt per line, or JSONL) for styles that make images from text.

Exit status: 0 every item succeeded (now or in an earlier run), 1 some failed (listed in
``failures.jsonl``), 2 usage error (bad arguments, no inputs, unknown style or param, service
unreachable), 130 interrupted (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import posixpath
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from stylefleet.errors import InsufficientStorage, InvalidPromptLine
from stylefleet.manifest import (
    FAILURES,
    MANIFEST,
    OUTPUT_EXTENSIONS,
    ManifestIndex,
    ManifestWriter,
    Record,
    failures_text,
    output_names,
    sha256_hex,
)
from stylefleet.prompts import describe_defaults, output_name, parse_prompts
from stylefleet.storage import Storage
from stylefleet.tools.batch.http import RetryPolicy, StyleClient
from stylefleet.tools.batch.inputs import InputError, Item, find_inputs, prompt_items, read_source
from stylefleet.tools.batch.plan import Plan, Tally, UsageError
from stylefleet.tools.batch.progress import Progress
from stylefleet.tools.batch.raydata import describe_style, run_ray_data

logger = logging.getLogger("stylefleet.tools.batch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
USAGE_CODES = frozenset({"unknown_style", "invalid_params"})  # the same for every image: stop the run


Sink = Callable[[Record], None]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        help="a folder (walked recursively) or a list file (one path or URI per line); for a style that makes "
        "images from text, a prompt list (one prompt per line, or .jsonl with prompt, seed, ... per line)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder or URI; mirrors the input tree")
    p.add_argument("--style", required=True, help="a style name (GET /v1/styles lists them)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="a style param, repeatable")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="FIELD=PATH",
        help="an extra file sent with every image (restyle: style_image=painting.jpg)",
    )
    p.add_argument("--format", choices=("png", "jpeg", "webp"), default="png", help="output format (default png)")
    p.add_argument("--variant", default=None, help="force an A/B variant")
    p.add_argument("--client-id", default=None, help="sticky A/B key sent with every image")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (http engine)")
    p.add_argument("--concurrency", type=int, default=8, help="images in flight at once (http engine; default 8, one full batch)")
    p.add_argument("--retries", type=int, default=5, help="retries per image on 429/502/503/504 and connection errors")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")
    p.add_argument("--force", action="store_true", help="redo every item, even those the manifest lists as done")
    p.add_argument("--engine", choices=("http", "ray-data"), default="http")
    p.add_argument(
        "--config", default="serve_config.yaml", help="ray-data engine: the serve config whose models and deployments it mirrors"
    )
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between plain progress lines (not on a terminal)")


def main(args: argparse.Namespace) -> int:
    try:
        plan, out = _plan(args, _describe_style(args))
    except (UsageError, InputError) as exc:
        print(f"stylefleet batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    index = ManifestIndex.load(out)
    writer = ManifestWriter(out)
    progress = Progress(len(plan.items), interval_s=args.progress_interval)
    tally = Tally(progress, writer, index)
    started = time.monotonic()
    status = EXIT_OK
    try:
        if args.engine == "http":
            _run_http(plan, out, index, tally, args)
        else:
            run_ray_data(plan, out, index, tally, config_path=args.config)
    except UsageError as exc:
        status = EXIT_USAGE
        print(f"\nstylefleet batch: {exc}", file=sys.stderr)
    except InsufficientStorage as exc:
        status = EXIT_STORAGE
        print(f"\nstylefleet batch: the output storage is full or cannot be written: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    finally:
        progress.close()
        status = _last_write(writer.flush, MANIFEST, out, status)
    current = [tally.records[i.rel] for i in plan.items if i.rel in tally.records]
    status = _last_write(lambda: out.write_text(FAILURES, failures_text(current)), FAILURES, out, status)
    failed = sum(r.status == "failed" for r in current)
    seconds = time.monotonic() - started
    print(
        f"stylefleet batch: {len(current)}/{len(plan.items)} items done: {len(current) - failed} ok, {failed} failed "
        f"({progress.skipped} of them done by an earlier run); {progress.ok + progress.failed} processed in "
        f"{seconds:.1f}s ({progress.rate():.2f} img/s)\n"
        f"  manifest: {out.full(MANIFEST)}\n  failures: {out.full(FAILURES)}",
        file=sys.stderr,
    )
    if status == EXIT_INTERRUPTED:
        print("stylefleet batch: interrupted; run the same command again to resume", file=sys.stderr)
    if status == EXIT_STORAGE:
        print("stylefleet batch: free space in the output, then run the same command again to resume", file=sys.stderr)
    if status != EXIT_OK:
        return status
    return EXIT_FAILED if failed or len(current) < len(plan.items) else EXIT_OK


def _last_write(write: Callable[[], None], name: str, out: Storage, status: int) -> int:
    """Write the manifest's last lines or ``failures.jsonl``; when the storage cannot take it,
    say so on stderr and give exit status 3 (an interruption keeps its 130)."""
    try:
        write()
    except InsufficientStorage as exc:
        print(f"stylefleet batch: {name} not written to {out.full(name)}: {exc.message}", file=sys.stderr)
        return status if status == EXIT_INTERRUPTED else EXIT_STORAGE
    return status


def _describe_style(args: argparse.Namespace) -> dict[str, Any]:
    """The style as GET /v1/styles describes it (ray-data: as the config's catalogue does)."""
    if args.engine == "ray-data":
        return describe_style(args.config, args.style)
    return asyncio.run(_fetch_style(args.url, args.style, args.timeout))


async def _fetch_style(url: str, style: str, timeout: float) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
            r = await client.get("/v1/styles")
            r.raise_for_status()
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the service at {url} ({exc})") from None
    styles = {s["name"]: s for s in r.json()["styles"]}
    if style not in styles:
        raise UsageError(f"unknown style {style!r}; known: {', '.join(sorted(styles))}")
    return dict(styles[style])


def _plan(args: argparse.Namespace, style: dict[str, Any]) -> tuple[Plan, Storage]:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    fields: dict[str, str] = {}
    for raw in args.param:
        name, sep, value = raw.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {raw!r}: use NAME=VALUE")
        if name in ("format", "variant", "client_id", "image"):
            raise UsageError(f"--param {name}: use the --{name.replace('_', '-')} option")
        fields[name] = value
    fields["format"] = args.format
    if args.variant:
        fields["variant"] = args.variant
    if args.client_id:
        fields["client_id"] = args.client_id
    extra: dict[str, bytes] = {}
    key_params = dict(fields)
    for raw in args.file:
        name, sep, path = raw.partition("=")
        if not sep or not name or name == "image":
            raise UsageError(f"--file {raw!r}: use FIELD=PATH (not image)")
        try:
            extra[name] = read_source(path)
        except OSError as exc:
            raise UsageError(f"--file {name}: {exc}") from None
        key_params[name] = "sha256:" + sha256_hex(extra[name])
    _check_names(style, fields, extra)
    out = Storage(args.output)
    if style["inputs"]:
        items = find_inputs(args.input, exclude=args.output)
        outputs = output_names([i.rel for i in items], args.format)
    else:
        items, outputs = _prompt_plan(args.input, style, fields, args.format)
    return Plan(args.style, fields, key_params, extra, items, outputs, force=args.force), out


def _prompt_plan(path: str, style: dict[str, Any], fields: dict[str, str], fmt: str) -> tuple[list[Item], dict[str, str]]:
    try:
        text = read_source(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the prompt list ({exc})") from None
    defaults, allowed = describe_defaults(style["params"])
    prompts = parse_prompts(text, posixpath.basename(path), run_fields=fields, defaults=defaults, allowed=allowed)
    if not prompts:
        raise InputError(f"{path}: no prompts (one per line, or a .jsonl object per line)")
    ext = OUTPUT_EXTENSIONS[fmt]
    outputs = {p.name: output_name(i, len(prompts), p.prompt, ext) for i, p in enumerate(prompts)}
    return prompt_items(prompts), outputs


def _check_names(style: dict[str, Any], fields: dict[str, str], extra: dict[str, bytes]) -> None:
    """Unknown param or file names are usage errors, found before the first item is sent."""
    accepted = {p["name"] for p in style["params"]} | {"variant", "client_id"} | set(style["inputs"])
    unknown = sorted(set(fields) - accepted) + sorted(set(extra) - set(style["inputs"]))
    if unknown:
        raise UsageError(f"style {style['name']!r} takes no {', '.join(unknown)}; it takes {', '.join(sorted(accepted - {'image'}))}")


# -- the http engine ---------------------------------------------------------------------------


def _run_http(plan: Plan, out: Storage, index: ManifestIndex, tally: Tally, args: argparse.Namespace) -> None:
    asyncio.run(_http_main(plan, out, index, tally, args))


async def _http_main(plan: Plan, out: Storage, index: ManifestIndex, tally: Tally, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        styler = StyleClient(client, plan.style, plan.fields, plan.extra_files, RetryPolicy(retries=args.retries))
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        interrupted = False

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            if main_task is not None:
                main_task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            await run_items(plan, out, index, tally.skipped, tally.finished, styler, args.concurrency)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)


async def run_items(
    plan: Plan,
    out: Storage,
    index: ManifestIndex,
    on_skip: Sink,
    on_done: Sink,
    styler: StyleClient,
    concurrency: int,
) -> None:
    """Each item: read and hash, skip if done, send, write atomically, record. At most
    ``concurrency`` items are in flight; a usage error (unknown style/param) stops them all."""
    queue = list(reversed(plan.items))

    async def worker() -> None:
        while queue:
            item = queue.pop()
            record = await _one(plan, out, index, on_skip, styler, item)
            if record is not None and record.error and record.error["code"] in USAGE_CODES and not item.prompt:
                # not the image's fault: stop, and record nothing, so a corrected re-run does it all
                # (a prompt line's own params can be at fault: that line fails alone)
                raise UsageError(f"{record.error['code']}: {record.error['message']}")
            if record is not None:
                on_done(record)

    async with _Gather() as group:
        for _ in range(min(concurrency, len(plan.items))):
            group.create_task(worker())


async def _one(plan: Plan, out: Storage, index: ManifestIndex, on_skip: Sink, styler: StyleClient, item: Item) -> Record | None:
    started = time.perf_counter()
    if item.prompt is not None:
        data = item.prompt.text.encode()
    else:
        try:
            data = await asyncio.to_thread(read_source, item.source)
        except OSError as exc:
            return plan.record(item, "", status="failed", error={"code": "unreadable_input", "message": str(exc)})
    sha = sha256_hex(data)
    done = None if plan.force else await asyncio.to_thread(index.done, plan.key(item, sha), out)
    if done is not None:
        on_skip(done)
        return None
    if item.prompt is not None and item.prompt.error:
        return plan.record(item, sha, status="failed", error={"code": InvalidPromptLine.code, "message": item.prompt.error})
    if item.prompt is not None:
        outcome = await styler.generate(item.prompt.fields)
    else:
        outcome = await styler.apply(posixpath.basename(item.rel), data)
    seconds = round(time.perf_counter() - started, 4)
    if not outcome.ok:
        return plan.record(
            item,
            sha,
            status="failed",
            variant=outcome.variant,
            seconds=seconds,
            error={"code": outcome.error_code or "error", "message": outcome.error_message or ""},
        )
    output = plan.outputs[item.rel]
    try:
        await asyncio.to_thread(out.write_bytes, output, outcome.content)
    except InsufficientStorage as exc:  # the run stops here (Tally.finished), once this item is counted
        error = {"code": exc.code, "message": exc.message}
        return plan.record(item, sha, status="failed", variant=outcome.variant, seconds=seconds, error=error)
    return plan.record(
        item,
        sha,
        status="ok",
        output=output,
        variant=outcome.variant,
        seed=outcome.seed,
        model_sha256=outcome.model_sha256,
        nsfw=outcome.nsfw,
        checks=outcome.checks,
        seconds=seconds,
    )


class _Gather:
    """Like ``asyncio.TaskGroup`` (3.11+), but the first error propagates as itself, not inside
    an ExceptionGroup, and cancels the other tasks."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def create_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def __aenter__(self) -> _Gather:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.gather(*self.tasks)
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
