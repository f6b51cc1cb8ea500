"""``stylefleet batch`` run in-process against a mock service: the command as parsed from its
arguments, with its HTTP client's transport replaced by ``httpx.MockTransport``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from stylefleet.tools.batch import run as batch


def run_batch(service: Callable[[httpx.Request], Any], *argv: str) -> int:
    """The command's exit status for ``argv``, every request answered by ``service``."""
    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    args = parser.parse_args(list(argv))
    transport = httpx.MockTransport(service)
    real = httpx.AsyncClient

    def patched(*a: object, **kw: object) -> httpx.AsyncClient:
        kw["transport"] = transport
        return real(*a, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch.httpx, "AsyncClient", patched)
        return batch.main(args)
