"""``stylefleet bench gpu --tiny`` end to end, served layer included: the harness that a GPU
machine runs, on the CPU at toy sizes, so that it cannot rot. It starts its own loopback Ray
(a subprocess, like a user's run) and is bounded: two models, two levels, a few requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.samples import ROOT

SUBJECTS = ["stylize", "sd-text-to-image"]


@pytest.mark.timeout(900)
def test_tiny_harness_measures_both_layers_and_writes_the_same_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "gpu-tiny.json"
    done = subprocess.run(
        [sys.executable, "-m", "stylefleet.tools.cli", "bench", "gpu", "--tiny", "--subjects", ",".join(SUBJECTS),
         "--batch-sizes", "1,2", "--repeats", "1", "--concurrency", "1,2", "--requests", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=840, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["layers_measured"] == ["model", "served"]
    for name in SUBJECTS:
        levels = result["served_layer"]["models"][name]["levels"]
        assert [lvl["concurrency"] for lvl in levels] == [1, 2]
        for level in levels:
            assert level["errors"] == 0 and level["ips"] > 0 and level["p50_ms"] > 0 and level["p95_ms"] >= level["p50_ms"]
            assert level["mean_batch_size"] >= 1
        summary = result["summary"][name]
        assert summary["served_best_ips"] > 0 and summary["served_over_per_image"] > 0 and summary["served_over_bare_same_batch"] > 0
    assert "== layers measured: model, served" in done.stdout
