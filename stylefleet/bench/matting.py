"""Seconds per remove-background call with and without alpha matting, at 512-4096 px (docs/api.md "Remove background: edges").

A measurement, not a test: run it by hand on an idle machine (.venv/bin/python -m stylefleet.bench.matting).
"""

from __future__ import annotations

import time
from typing import Any

import cv2
from skimage import data

from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import resolve


def main() -> None:
    model: Any = U2NetModel(resolve("u2netp"), RuntimeOptions(device="cpu", threads=1))
    run_batch(model, [ModelRequest({"image": data.astronaut()}, {"alpha_matting": True})])  # numba compiles here
    for side in (512, 1024, 2048, 4096):
        pixels = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
        for matting in (False, True):
            started = time.perf_counter()
            run_batch(model, [ModelRequest({"image": pixels}, {"alpha_matting": matting})])
            print(f"{side}x{side} alpha_matting={matting}: {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
