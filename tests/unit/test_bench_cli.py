"""``stylefleet bench MODE``: each mode parses its own flags, and ``rembg`` and ``soak`` are the
served run with one pass of their own at its end. Parsing only: nothing is measured."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from stylefleet.bench import cli as bench_cli
from stylefleet.bench import served
from stylefleet.tools import cli

MODES = sorted(bench_cli.MODES)


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["bench", *argv])


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_has_a_help_that_fits_one_screen(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(mode, "--help")
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) <= 48


def test_a_mode_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse("--config", "serve_config.yaml")
    assert exit_info.value.code == 2


def test_served_flags_stay_with_the_served_modes() -> None:
    assert _parse("served").batch_sizes == "1,4,8"
    with pytest.raises(SystemExit):
        _parse("served", "--minutes", "10")  # the soak's flag
    with pytest.raises(SystemExit):
        _parse("sessions", "--concurrency", "16")  # no service in the sessions sweep


@pytest.mark.parametrize(
    ("argv", "key", "defaults"),
    [
        (["rembg", "--rembg", "/x/rembg"], "rembg", {"only": "remove-background", "compare": False, "concurrency": "1,16"}),
        (["soak", "--minutes", "0.5"], "soak", {"only": "stylize", "compare": False, "concurrency": "16", "turns": 0}),
    ],
)
def test_rembg_and_soak_are_the_served_run_with_their_own_last_pass(
    argv: list[str], key: str, defaults: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[argparse.Namespace, list[Any]]] = []
    monkeypatch.setattr(served, "main", lambda args, extra=(): calls.append((args, list(extra))) or 0)
    args = _parse(*argv)
    assert {k: getattr(args, k) for k in defaults} == defaults
    assert args.func(args) == 0
    [(seen, extra)] = calls
    assert seen is args and len(extra) == 1
    assert callable(extra[0]) and extra[0].__qualname__.startswith(f"{key}_pass")
