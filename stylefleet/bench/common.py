"""What the modes of ``stylefleet bench`` share: the photos, the cases a config yields, the JSON it writes."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stylefleet.bench.load import Case
from stylefleet.imageio import decode, encode, resize_to_max_side
from stylefleet.spec import AppSpec


def sample_photos() -> dict[str, bytes]:
    from skimage import data

    return {
        "image": encode(np.ascontiguousarray(data.astronaut()), "jpeg", 95),
        "style_image": encode(np.ascontiguousarray(data.chelsea()), "jpeg", 95),
    }


SMALL_SIDE = 64


def small_samples(samples: dict[str, bytes], side: int = SMALL_SIDE) -> dict[str, bytes]:
    """The same photos at ``side`` px on the longer side: a request whose model time (a few ms)
    is small beside the path around it, so the HTTP path's few ms are not lost in the model's
    own jitter (at 512 px, tens of ms between one call and the next on this machine)."""
    return {name: encode(resize_to_max_side(decode(data, max_pixels=10**8).pixels, side), "jpeg", 95) for name, data in samples.items()}


def style_cases(spec: AppSpec) -> list[Case]:
    """One case per deployment: its first single-variant style, with that style's fixed params."""
    cases = []
    for name in spec.deployments:
        kind = spec.kind_of(name)
        style = next((s for s, c in spec.args.styles.items() if c.deployment == name), None)
        if style is not None and not kind.composed:
            cases.append(Case(style=style, deployment=name, params=spec.args.styles[style].params, files=kind.image_fields))
    return cases


IDPHOTO_PARAMS = {"size": "passport", "format": "jpeg"}


def idphoto_style_cases(spec: AppSpec) -> list[Case]:
    return [
        Case(style=style, deployment=c.deployment, params=IDPHOTO_PARAMS, files=("image",), fields=tuple(IDPHOTO_PARAMS.items()))
        for style, c in spec.args.styles.items()
        if c.deployment and spec.deployments[c.deployment].model == "id-photo"
    ]


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def machine() -> dict[str, Any]:

    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def selected_cases(spec: AppSpec, only: str) -> tuple[list[Case], list[Case]]:
    """The style cases and the ID-photo cases of the deployments in ``only`` (comma-separated; empty: all)."""
    wanted = {s for s in only.split(",") if s}
    return (
        [c for c in style_cases(spec) if not wanted or c.deployment in wanted],
        [c for c in idphoto_style_cases(spec) if not wanted or c.deployment in wanted],
    )


def ints(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``."""
    return [int(x) for x in text.split(",") if x]


# A pass a mode adds after the served levels, with the service still up: (url, spec, photos) ->
# (its key in the JSON, its result). ``rembg`` and ``soak`` are such passes.
ExtraPass = Callable[[str, AppSpec, dict[str, bytes]], tuple[str, Any]]


def rounds_arg(text: str) -> int:
    """A count of alternating rounds: at least 1 (a median of no rounds is no figure)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 round, not {value}")
    return value
