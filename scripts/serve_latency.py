"""p50 latency at concurrency 1 of trivial routes and of styles at 64 and 512 px (scripts/serve_modes.sh)."""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

URL = os.environ.get("URL", "http://127.0.0.1:8000")


def noise_jpeg(side: int) -> bytes:
    pixels = (np.random.default_rng(0).random((side, side, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def p50_ms(call: Callable[[], httpx.Response], n: int = 30) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return statistics.median(times)


def main() -> None:
    with httpx.Client(base_url=URL, timeout=60) as client:
        for path in ("/healthz/live", "/openapi.json", "/v1/styles"):
            print(f"GET {path}: p50 {p50_ms(lambda p=path: client.get(p)):.1f} ms")
        for side in (64, 512):
            data = noise_jpeg(side)
            for style in sys.argv[1:] or ["frost"]:
                ms = p50_ms(lambda s=style, d=data: client.post(f"/v1/styles/{s}", files={"image": ("a.jpg", d, "image/jpeg")}), 15)
                print(f"POST {style} {side} px: p50 {ms:.1f} ms")


if __name__ == "__main__":
    main()
