"""``stylefleet bench MODE``: one subcommand per mode, each with its own flags and its own module.

    served    bare rows, then the service over HTTP against them (the main figures)
    bare      the bare rows alone: each ONNX model in this process at its fastest setup
    sessions  ONNX Runtime session options on the real networks
    rembg     remove-background served, then against rembg's own server
    soak      one style served, then a sustained load with each replica's RSS
    models    the model layer's table per model and batch size (no Ray)
    quant     int8 against fp32: speed in turns and quality on held-out photos, with a verdict per network
    gpu       the model table and the served layer on CUDA (``--tiny``: on the CPU at toy sizes)

Each writes JSON (``--out``) and prints its figures; docs/performance.md says what each means.
"""

from __future__ import annotations

import argparse
from typing import Any

from stylefleet.bench import bare, gpu, quant, rembg, served, sessions, soak, table


def _served_with(extra: Any) -> Any:
    """The served run with one extra pass, built from the parsed flags."""
    return lambda args: served.main(args, [extra(args)])


MODES = {  # name -> (one-line help, add_arguments functions, main)
    "served": ("bare rows, then the service over HTTP against them", (served.add_arguments,), served.main),
    "bare": ("each ONNX model in this process at its fastest session setup (no Ray)", (bare.add_arguments,), bare.main),
    "sessions": ("ONNX Runtime session options on the real networks (no Ray)", (sessions.add_arguments,), sessions.main),
    "rembg": ("remove-background served, then against `rembg s` on the same model", (served.add_arguments, rembg.add_arguments),
              _served_with(rembg.rembg_pass)),
    "soak": ("one style served, then a sustained load with each replica's RSS", (served.add_arguments, soak.add_arguments),
             _served_with(soak.soak_pass)),
    "models": ("the model layer's table per model and batch size (no Ray)", (table.add_arguments,), table.main),
    "quant": ("int8 against fp32 per ONNX network: bare and served speed in turns, quality on held-out photos",
              (quant.add_arguments,), quant.main),
    "gpu": ("the model table and the served layer on CUDA (--tiny: the CPU at toy sizes)", (gpu.add_arguments,), gpu.main),
}


def add_parser(sub: Any) -> None:
    """``bench`` and its modes on the ``stylefleet`` command's subparsers."""
    bench = sub.add_parser(
        "bench", help="measure bare and served throughput; print and write JSON", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = bench.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, (help_text, adders, run) in MODES.items():
        mode = modes.add_parser(name, help=help_text, description=help_text)
        for add in adders:
            add(mode)
        mode.set_defaults(func=run)
