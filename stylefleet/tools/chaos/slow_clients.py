"""``python -m stylefleet.tools.chaos slow-clients``: starts the shipped router (serve_config.yaml's
limits and router settings, direct ingress on a free loopback port, only the ``stylize``
deployment behind it so it starts quickly), then from 5 loopback addresses (127.0.0.2-6) keeps
64 uploads each open, every one promising 1 MB and sending one byte every 5 s; an upload that is
answered (refused or timed out) waits 5 s and starts again. Meanwhile ``/healthz/live`` is asked
every second and a normal ``frost`` request sent every two; the report counts what the attack
got and how the probes and the normal requests fared. ``--url`` aims at a running service instead.
"""

from __future__ import annotations

import asyncio
import copy
import io
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import yaml


def _small_photo() -> bytes:
    """scikit-image's coffee photo at 256 px, a JPEG: a normal request's upload."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    image = Image.fromarray(data.coffee())
    image.thumbnail((256, 256))
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_s": None, "max_s": None}
    return {"n": len(values), "p50_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


async def _trickler(
    host: str, port: int, path: str, source: str, byte_every_s: float, until: float, answers: list[tuple[str, float]]
) -> None:
    """One slow client: headers promising 1 MB, then a byte every ``byte_every_s`` until answered;
    then a pause and again, until ``until``. Records (status or what happened, seconds held)."""
    head = (
        f"POST {path}/v1/styles/frost HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000000\r\n\r\n"
        '--xyz\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()  # a well-formed start, so the form parser waits for the file's bytes
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            answers.append(("connect_failed", 0.0))
            await asyncio.sleep(byte_every_s)
            continue
        outcome = None
        try:
            writer.write(head)
            await writer.drain()
            while outcome is None and time.monotonic() < until:
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout=byte_every_s)
                except asyncio.TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
                    continue
                parts = line.split()
                outcome = parts[1].decode() if len(parts) > 1 else "closed"
        except (ConnectionError, OSError):
            outcome = "reset"
        finally:
            writer.close()
        if outcome is None:  # the run ended with this one still held
            answers.append(("held_at_end", time.monotonic() - started))
            return
        answers.append((outcome, time.monotonic() - started))
        await asyncio.sleep(byte_every_s)


async def _prober(client: httpx.AsyncClient, every_s: float, until: float, results: list[tuple[str, float]], photo: bytes | None) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            if photo is None:
                response = await client.get("/healthz/live")
            else:
                response = await client.post("/v1/styles/frost", files={"image": ("coffee.jpg", photo, "image/jpeg")})
            outcome = str(response.status_code)
        except httpx.TimeoutException:
            outcome = "timeout"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        elapsed = time.monotonic() - started
        results.append((outcome, elapsed))
        await asyncio.sleep(max(0.0, every_s - elapsed))


async def _attack(
    url: str, addresses: int, per_address: int, byte_every_s: float, quiet_s: float, duration_s: float, probe_timeout_s: float
) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port, path = parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path.rstrip("/")
    photo = _small_photo()
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=url, timeout=probe_timeout_s, limits=limits) as client:
        quiet_live: list[tuple[str, float]] = []
        quiet_frost: list[tuple[str, float]] = []
        until = time.monotonic() + quiet_s
        await asyncio.gather(_prober(client, 1.0, until, quiet_live, None), _prober(client, 2.0, until, quiet_frost, photo))

        answers: list[tuple[str, float]] = []
        live: list[tuple[str, float]] = []
        frost: list[tuple[str, float]] = []
        until = time.monotonic() + duration_s
        tricklers = [
            _trickler(host, port, path, f"127.0.0.{2 + a}", byte_every_s, until, answers)
            for a in range(addresses)
            for _ in range(per_address)
        ]
        await asyncio.gather(*tricklers, _prober(client, 1.0, until, live, None), _prober(client, 2.0, until, frost, photo))

    def summary(results: list[tuple[str, float]]) -> dict[str, Any]:
        return {"answers": dict(Counter(o for o, _ in results)), **_percentiles([s for o, s in results if o == "200"])}

    return {
        "url": url,
        "attack": {
            "addresses": addresses,
            "uploads_per_address": per_address,
            "byte_every_s": byte_every_s,
            "duration_s": duration_s,
            "answers": dict(Counter(o for o, _ in answers)),
            "held_until_408_s": _percentiles([s for o, s in answers if o == "408"]),
            "refused_after_s": _percentiles([s for o, s in answers if o in ("429", "503")]),
        },
        "quiet": {"healthz_live": summary(quiet_live), "frost": summary(quiet_frost)},
        "under_attack": {"healthz_live": summary(live), "frost": summary(frost)},
    }


def _shipped_router_only(config_path: str, port: int) -> dict[str, Any]:
    """serve_config.yaml as shipped (limits, router), with only what ``frost`` needs deployed."""
    config = yaml.safe_load(Path(config_path).read_text())
    config = copy.deepcopy(config)
    config["http_options"]["port"] = port
    [app] = config["applications"][:1]
    config["applications"] = [app]
    args = app["args"]
    deployment = args["styles"]["frost"]["deployment"]
    args["deployments"] = {deployment: args["deployments"][deployment]}
    args["styles"] = {"frost": args["styles"]["frost"]}
    # the router's A/B splits name styles no longer here: it keeps its defaults
    app["deployments"] = [d for d in app.get("deployments", []) if d["name"] == deployment]
    return config


def slow_clients(
    config: str = "serve_config.yaml",
    *,
    url: str | None = None,
    addresses: int = 5,
    per_address: int = 64,
    byte_every_s: float = 5.0,
    quiet_s: float = 6.0,
    duration_s: float = 45.0,
    probe_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """The slow-clients measurement (module doc); starts and stops its own service unless ``url``."""
    run = lambda target: asyncio.run(  # noqa: E731 - one call, two places
        _attack(target, addresses, per_address, byte_every_s, quiet_s, duration_s, probe_timeout_s)
    )
    if url is not None:
        return run(url)
    import shutil
    import tempfile

    from stylefleet.tools import local

    port = local.free_port()
    document = _shipped_router_only(config, port)
    jobs = tempfile.mkdtemp(prefix="stylefleet-chaos-jobs-")
    document["applications"][0]["args"].setdefault("jobs", {})["storage"] = jobs
    cluster = local.LocalCluster(http_port=port, ingress="direct", num_cpus=2, log_to_driver=False)
    cluster.start()
    try:
        cluster.deploy(document, timeout_s=300)
        report = run(f"http://127.0.0.1:{port}")
    finally:
        cluster.stop()
        shutil.rmtree(jobs, ignore_errors=True)
    limits = document["applications"][0]["args"]["limits"]
    router = document["applications"][0]["args"]["router"]
    report["limits"] = {**limits, "router.max_ongoing_requests": router["max_ongoing_requests"]}
    return report


def slow_clients_held(report: dict[str, Any]) -> bool:
    """Whether every probe and every normal request under attack got a 200."""
    under = report["under_attack"]
    return all(set(under[name]["answers"]) == {"200"} for name in ("healthz_live", "frost"))
