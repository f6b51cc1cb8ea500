"""CPU time of each part of one image's work, per ONNX model, on one thread: decode, prepare,
the network, finish, encode. The network's share of the sum is the most served/bare-fastest
that any server returning the same bytes can reach on a CPU-bound machine, before HTTP, the
client and Ray take theirs.

Usage: .venv/bin/python -m stylefleet.bench.parts [repeats] (default 30; the bench's photos, the
shipped serve_config.yaml, batch 4 as the replica runs it). docs/performance.md "The ceiling by parts".
Each part is timed with ``time.thread_time`` in one thread, the parts in turns (one image through
all of them, then the next), so the host's drift hits every part alike; medians over the repeats.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from stylefleet.bench.bare import PARALLEL, setup_model
from stylefleet.bench.common import sample_photos, style_cases
from stylefleet.deployments.batching import ModelRequest, OutputSpec, decoded
from stylefleet.imageio import encode
from stylefleet.spec import load_serve_file

BATCH = 4  # the shipped max_batch_size: the network's time per image is a quarter of one call


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.thread_time()
    out = fn()
    return (time.thread_time() - t0) * 1000, out


def one_image(net: Any, request: ModelRequest) -> tuple[float, ...]:
    """ms of CPU of each part, in order: decode, prepare, network (per image of a batch), finish, encode."""
    t_dec, req = timed(lambda: decoded(net, request))
    t_prep, prepared = timed(lambda: net.prepare(req))
    t_net, raw = timed(lambda: net.infer([prepared] * BATCH))
    t_fin, out = timed(lambda: net.finish(prepared, raw[0]))
    t_enc, _ = timed(lambda: encode(out, "png"))
    return t_dec, t_prep, t_net / BATCH, t_fin, t_enc


def parts(repeats: int) -> None:
    spec = load_serve_file("serve_config.yaml").app
    samples = sample_photos()
    print(f"ms of CPU per image on one thread, median of {repeats}; network at batch {BATCH}, per image")
    print(f"{'deployment':<18} {'decode':>7} {'prepare':>8} {'network':>8} {'finish':>7} {'encode':>7} {'all':>7} {'network share':>14}")
    for case in style_cases(spec):  # the bench's cases: one style per ONNX deployment
        net = setup_model(spec.model_spec(case.deployment), PARALLEL, None)
        request = ModelRequest({}, dict(case.params), OutputSpec("png"), files={f: samples[f] for f in case.files})
        rows: dict[str, list[float]] = {k: [] for k in ("decode", "prepare", "network", "finish", "encode")}
        for i in range(repeats + 1):
            times = one_image(net, request)
            if i == 0:
                continue  # the first pass warms the session and the caches
            for key, value in zip(rows, times, strict=True):
                rows[key].append(value)
        med = {k: statistics.median(v) for k, v in rows.items()}
        total = sum(med.values())
        print(
            f"{case.deployment:<18} {med['decode']:7.1f} {med['prepare']:8.1f} {med['network']:8.1f} {med['finish']:7.1f} "
            f"{med['encode']:7.1f} {total:7.1f} {med['network'] / total:14.2f}",
            flush=True,
        )


if __name__ == "__main__":
    parts(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
