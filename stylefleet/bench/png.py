"""PNG encode time and size of each ONNX model's real output: Pillow against libpng's filters.

Usage: .venv/bin/python -m stylefleet.bench.png [REPEATS] (default 15). Runs each model once on the
astronaut (restyle: the cat as the style), then encodes its output with Pillow (per-row adaptive
filter, zlib level 1, run-length strategy: what stylefleet used before) and with libpng through
imagecodecs at the same level and strategy, one filter for every row. Median milliseconds of
REPEATS, alternating the encoders, and the file's size. docs/performance.md "PNG encoding".
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable

import imagecodecs
import numpy as np
from PIL import Image
from skimage import data

from stylefleet.deployments.batching import ModelRequest, OutputSpec, run_batch
from stylefleet.deployments.loader import load_model
from stylefleet.imageio import PNG_COMPRESS_LEVEL, PNG_COMPRESS_TYPE
from stylefleet.spec import load_serve_file

FILTERS = ("NONE", "SUB", "UP", "AVG", "PAETH", "ALL")


def pillow(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE)
    return buf.getvalue()


def libpng(name: str) -> Callable[[np.ndarray], bytes]:
    flt = getattr(imagecodecs.PNG.FILTER, name)

    def encode(pixels: np.ndarray) -> bytes:
        out = imagecodecs.png_encode(np.ascontiguousarray(pixels), level=PNG_COMPRESS_LEVEL, strategy=PNG_COMPRESS_TYPE, filter=flt)
        return bytes(out)

    return encode


def outputs() -> dict[str, np.ndarray]:
    spec = load_serve_file("serve_config.yaml").app
    photo, cat = np.ascontiguousarray(data.astronaut()), np.ascontiguousarray(data.chelsea())
    cases = {
        "stylize": ({"style": "14"}, {"image": photo}),
        "restyle": ({}, {"image": photo, "style_image": cat}),
        "remove-background": ({}, {"image": photo}),
    }
    out = {}
    for deployment, (params, images) in cases.items():
        model = load_model(spec.model_spec(deployment)).model
        [result] = run_batch(model, [ModelRequest(images, params, OutputSpec("png"))])
        assert isinstance(result, np.ndarray), result
        out[deployment] = result
    return out


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    encoders: dict[str, Callable[[np.ndarray], bytes]] = {"Pillow (before)": pillow}
    encoders.update({f"libpng {name.lower()}": libpng(name) for name in FILTERS})
    print("| output | encoder | ms (median) | bytes | lossless |")
    print("|---|---|---|---|---|")
    for deployment, pixels in outputs().items():
        times: dict[str, list[float]] = {name: [] for name in encoders}
        sizes: dict[str, bytes] = {}
        for _ in range(repeats):  # alternate: the machine's drift hits every encoder alike
            for name, encode in encoders.items():
                started = time.perf_counter()
                sizes[name] = encode(pixels)
                times[name].append(time.perf_counter() - started)
        shape = "x".join(str(n) for n in pixels.shape)
        for name in encoders:
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(sizes[name]))), pixels)
            ms = statistics.median(times[name]) * 1000
            print(f"| {deployment} {shape} | {name} | {ms:.1f} | {len(sizes[name])} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
