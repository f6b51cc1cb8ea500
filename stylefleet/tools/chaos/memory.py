"""Memory under pressure: what one image costs each model, and the shipped app under the worst mix.

``python -m stylefleet.tools.chaos per-pixel``: for each model kind and a few sizes, a fresh
process loads the model (no warm-up) and runs one request the way a replica does (decode,
prepare, network, finish, encode); it prints the peak RSS growth over the loaded model, per
megapixel of output. ``stylefleet.deployments.kinds`` keeps the figures (``bytes_per_pixel``);
docs/batching.md "Memory" has the table.

``python -m stylefleet.tools.chaos memory`` (``make chaos``): starts the shipped app on a free
port (``stylefleet.tools.local``), sends concurrent 4096x4096 JPEGs (scikit-image's astronaut
scaled up, quality 90) to ``frost`` at max_side 4096 and to ``remove-background``, samples
every replica's RSS meanwhile, and checks that each request got 200 or a typed 4xx/503, that no
Ray worker died, and that each replica's peak RSS stayed within its memory budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from PIL import Image

# (model kind, params at a size) for the per-pixel measurement; remove-background with the
# shipped preset that costs the most (cutout-id: alpha matting).
PER_PIXEL_CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    "multistyle26": lambda side: {"style": "14", "max_side": side},
    "arbitrary": lambda side: {"max_side": side},
    "u2netp": lambda side: {"max_side": side, "alpha_matting": True, "erode_px": 1},
    "haar-face": lambda side: {},
    "face-mesh": lambda side: {},
}
PER_PIXEL_SIDES: dict[str, tuple[int, ...]] = {
    "multistyle26": (1024, 2048, 2896),
    "arbitrary": (1024, 2048, 4096),
    "u2netp": (1024, 2048, 4096),
    "haar-face": (1024, 2048, 4096),
    "face-mesh": (1024, 2048, 4096),
}


def photo_jpeg(side: int, quality: int = 90) -> bytes:
    """A real photo (scikit-image's astronaut) scaled to ``side`` x ``side``, as a JPEG."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class PeakRss:
    """The peak RSS of this process while the block runs: sampled every 2 ms, and the kernel's
    high-water mark where that rose during the block."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self._hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if hwm > self._hwm_before:
            self.peak = max(self.peak, hwm)


def measure_one(model: str, side: int) -> dict[str, Any]:
    """One request of ``side`` x ``side`` through a freshly loaded ``model``, as a replica runs it."""
    from stylefleet.config import ModelSpec
    from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, infer_prepared, prepare_one, request_pixels
    from stylefleet.deployments.kinds import KINDS
    from stylefleet.deployments.loader import load_model
    from stylefleet.deployments.onnx_session import running_alone

    loaded = load_model(ModelSpec(deployment="measure", model=model))
    files = {"image": photo_jpeg(side)}
    if model == "arbitrary":
        files["style_image"] = photo_jpeg(512)
    output = OutputSpec("png") if KINDS[model].returns_image else None
    request = ModelRequest({}, PER_PIXEL_CASES[model](side), output, files=files)
    pixels = request_pixels(loaded.model, request)
    budget = KINDS[model].max_batch_pixels
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with PeakRss() as peak:
        prepared = prepare_one(loaded.model, request)
        with running_alone(True):
            [outcome] = infer_prepared(loaded.model, [prepared], [pixels], budget)
        del prepared
        [reply] = encode_outcomes([request], [outcome], loaded.model_sha256)
    seconds = time.perf_counter() - started
    if isinstance(reply, Exception):
        raise reply
    growth = peak.peak - before
    return {
        "model": model,
        "side": side,
        "pixels": pixels,
        "rss_loaded_bytes": before,
        "peak_growth_bytes": growth,
        "bytes_per_pixel": round(growth / pixels, 1),
        "seconds": round(seconds, 2),
    }


def warm_up_one(model: str, warm: bool, side: int = 1024, max_batch_size: int = 4) -> dict[str, Any]:
    """A replica's model loaded as served (its default calls and lone-call session), warmed up for
    batches of 1 to ``max_batch_size`` or not, then its first request (``side`` px JPEG): RSS at
    each step and that request's latency."""
    from stylefleet.config import ModelSpec
    from stylefleet.deployments.batching import ModelRequest, OutputSpec, encode_outcomes, infer_prepared, prepare_one, request_pixels
    from stylefleet.deployments.kinds import KINDS
    from stylefleet.deployments.loader import load_model
    from stylefleet.deployments.onnx_session import running_alone

    process = psutil.Process()
    loaded = load_model(ModelSpec(deployment="measure", model=model))
    rss_loaded = process.memory_info().rss
    warm_s = None
    if warm:
        started = time.perf_counter()
        loaded.model.warm_up(max_batch_size, KINDS[model].max_batch_pixels)
        warm_s = time.perf_counter() - started
    rss_ready = process.memory_info().rss
    request = ModelRequest({}, {"max_side": side}, OutputSpec("png"), files={"image": photo_jpeg(side)})
    started = time.perf_counter()
    prepared = prepare_one(loaded.model, request)
    with running_alone(True):
        outcome = infer_prepared(loaded.model, [prepared], [request_pixels(loaded.model, request)], KINDS[model].max_batch_pixels)
    encode_outcomes([request], outcome, loaded.model_sha256)
    first_s = time.perf_counter() - started
    return {
        "model": model,
        "warm_up": warm,
        "rss_loaded_bytes": rss_loaded,
        "rss_ready_bytes": rss_ready,
        "warm_up_seconds": None if warm_s is None else round(warm_s, 2),
        "first_request_seconds": round(first_s, 3),
        "rss_after_first_bytes": process.memory_info().rss,
    }


def warm_up_costs(models: list[str]) -> list[dict[str, Any]]:
    """Each model warmed and not, each in a fresh process; one JSON line each."""
    rows = []
    for model in models:
        for warm in (True, False):
            out = subprocess.run(
                [sys.executable, "-m", "stylefleet.tools.chaos", "warm-up-one", model, "1" if warm else "0"],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def per_pixel(models: list[str] | None = None) -> list[dict[str, Any]]:
    """Each (model, side) of PER_PIXEL_SIDES in a fresh process; one JSON line each."""
    rows = []
    for model in models or list(PER_PIXEL_CASES):
        for side in PER_PIXEL_SIDES[model]:
            out = subprocess.run(
                [sys.executable, "-m", "stylefleet.tools.chaos", "measure-one", model, str(side)],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


MODEL_DEPLOYMENTS = ("stylize", "restyle", "remove-background", "face-detect")


def _deployment_info(deployment: str, app: str) -> dict[str, Any]:
    from ray import serve

    return dict(serve.get_deployment_handle(deployment, app).info.remote().result())


def _serve_processes() -> dict[str, int]:
    """Serve's controller, proxy and replicas on this machine, by process title (``ray::...``)."""
    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        title = (process.info["cmdline"] or [""])[0]
        if title.startswith(("ray::ServeController", "ray::ServeReplica", "ray::ProxyActor")):
            found[title.split(" ")[0].split(".")[0]] = process.info["pid"]  # less the method it runs now
    return found


def _answer(response: Any) -> str:
    if response.status_code == 200:
        return "200"
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - an untyped answer is what this case looks for
        code = "untyped"
    return f"{response.status_code} {code}"


def memory(
    config_path: str = "serve_config.yaml", requests_each: int = 16, side: int = 4096, ray_memory_bytes: int | None = None
) -> dict[str, Any]:
    """The shipped app under its worst mix: ``requests_each`` concurrent ``side`` px JPEGs to
    ``frost`` (half at max_side = side, half at side / 2), as many to ``remove-background`` and as
    many to ``id-photo`` (passport), all at once.

    Passes when every request got 200 or a typed 4xx/503, no replica, router or controller was
    replaced (same process ids before and after: Ray's memory monitor killed none), and each
    model replica's peak RSS (psutil, sampled every 50 ms, and its own high-water mark) stayed
    within its memory budget.
    """
    import asyncio
    import copy
    import shutil
    import tempfile

    import httpx
    import yaml

    from stylefleet.tools import local

    with open(config_path) as f:
        document = yaml.safe_load(f)
    config = copy.deepcopy(document)
    port = local.free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app_name = app["name"]
    storage = tempfile.mkdtemp(prefix="stylefleet-chaos-jobs-")
    app["args"]["jobs"]["storage"] = storage
    image = photo_jpeg(side)
    node_before = psutil.virtual_memory().percent  # the machine before this case started anything
    # Ray's memory resource as `stylefleet run` sets it (None: the machine less a reserve), not
    # what a shared machine happens to have free: the replicas' budgets are placed against it.
    cluster = local.LocalCluster(http_port=port, ingress="direct", log_to_driver=False, memory_bytes=ray_memory_bytes)
    cluster.start()
    try:
        cluster.deploy(config, timeout_s=600)
        infos = {d: _deployment_info(d, app_name) for d in MODEL_DEPLOYMENTS}
        pids = {d: info["pid"] for d, info in infos.items()}
        serve_before = _serve_processes()
        peaks = {d: 0 for d in pids}
        node_peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                for d, pid in pids.items():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        peaks[d] = max(peaks[d], psutil.Process(pid).memory_info().rss)
                node_peak[0] = max(node_peak[0], psutil.virtual_memory().percent)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        url = f"http://127.0.0.1:{port}"

        async def burst() -> list[tuple[str, str, float]]:
            async with httpx.AsyncClient(timeout=300) as client:
                async def one(style: str, data: dict[str, str]) -> tuple[str, str, float]:
                    started = time.perf_counter()
                    try:
                        r = await client.post(f"{url}/v1/styles/{style}", files={"image": ("p.jpg", image, "image/jpeg")}, data=data)
                        answer = _answer(r)
                    except httpx.HTTPError as exc:
                        answer = f"no answer: {exc!r}"
                    return f"{style} {data.get('max_side', '')}".strip(), answer, round(time.perf_counter() - started, 1)

                # Half of frost's at the full side (over stylize's budget: 413 at once), half at
                # half the side (about 2.9 GiB each: admitted one or two at a time).
                calls = [one("frost", {"max_side": str(side if i % 2 == 0 else side // 2)}) for i in range(requests_each)]
                calls += [one("remove-background", {}) for _ in range(requests_each)]
                calls += [one("id-photo", {"size": "passport"}) for _ in range(requests_each)]
                return list(await asyncio.gather(*calls))

        started = time.perf_counter()
        answers = asyncio.run(burst())
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        after = {d: _deployment_info(d, app_name) for d in MODEL_DEPLOYMENTS}
        serve_after = _serve_processes()
        typed = all(a == "200" or a.split()[0] in {"400", "413", "415", "422", "429", "503"} and not a.endswith("untyped")
                    for _, a, _ in answers)
        same = {d: after[d]["pid"] == pids[d] for d in pids} | {
            title: serve_after.get(title) == pid for title, pid in serve_before.items()
        }
        within = {d: max(peaks[d], after[d]["rss_peak_bytes"]) <= after[d]["memory_budget_bytes"] for d in pids}
        summary: dict[str, Any] = {
            "side": side,
            "requests_each": requests_each,
            "wall_seconds": round(wall, 1),
            "answers": {f"{s} {a}": sum(1 for x in answers if x[:2] == (s, a)) for s, a, _ in answers},
            "all_typed": typed,
            "same_processes": same,
            "node_memory_before_percent": node_before,
            "node_memory_peak_percent": node_peak[0],
            "node_memory_peak_of_this_case_gib": round(
                (node_peak[0] - node_before) / 100 * psutil.virtual_memory().total / 2**30, 1
            ),
            "replicas": {
                d: {
                    "budget_mib": after[d]["memory_budget_bytes"] >> 20,
                    "idle_rss_mib": infos[d]["rss_bytes"] >> 20,
                    "peak_rss_sampled_mib": peaks[d] >> 20,
                    "peak_rss_hwm_mib": after[d]["rss_peak_bytes"] >> 20,
                    "admission_room_mib": after[d].get("memory_admission_budget_bytes", 0) >> 20,
                    "peak_reserved_mib": after[d].get("memory_peak_reserved_bytes", 0) >> 20,
                    "waited": after[d].get("memory_waited_total"),
                    "refused_too_large": after[d].get("memory_refused_too_large_total"),
                    "refused_waiting": after[d].get("memory_refused_waiting_total"),
                }
                for d in pids
            },
            "within_budget": within,
        }
        summary["ok"] = typed and all(same.values()) and all(within.values())
        return summary
    finally:
        cluster.stop()
        shutil.rmtree(storage, ignore_errors=True)
