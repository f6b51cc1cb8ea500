"""Requests/s at concurrency 16 (64 requests after a warm-up) for each style named (scripts/serve_modes.sh)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time

import httpx
from PIL import Image
from skimage import data

URL = os.environ.get("URL", "http://127.0.0.1:8000")


def astronaut_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "JPEG", quality=90)
    return out.getvalue()


async def rate(style: str, concurrency: int, total: int, photo: bytes) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=URL, timeout=120, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)
        ok = 0

        async def one() -> None:
            nonlocal ok
            async with gate:
                response = await client.post(f"/v1/styles/{style}", files={"image": ("a.jpg", photo, "image/jpeg")})
                ok += response.status_code == 200

        await asyncio.gather(*[one() for _ in range(concurrency)])  # warm-up
        ok = 0
        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(total)])
        return ok / (time.perf_counter() - started), ok


def main() -> None:
    photo = astronaut_jpeg()
    for style in sys.argv[1:]:
        per_s, ok = asyncio.run(rate(style, 16, 64, photo))
        print(f"{style} concurrency 16: {per_s:.2f} req/s ({ok} ok)", flush=True)


if __name__ == "__main__":
    main()
