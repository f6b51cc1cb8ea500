"""``stylefleet bench gpu`` and ``models`` on the CPU: the refusal without CUDA, the whole
harness at toy sizes (``--tiny``: the JSON it writes), peak memory per span, and the summary's
arithmetic. Figures are not checked against speeds: a benchmark measures, a test does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylefleet.bench import gpu, table
from stylefleet.tools import cli

CUDA = torch.cuda.is_available()


def _run(tmp_path: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "gpu.json"
    rc = cli.main(["bench", "gpu", *flags, "--out", str(out)])
    return rc, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: bench gpu runs instead of refusing")
def test_without_cuda_bench_gpu_refuses_saying_why_and_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, written = _run(tmp_path)
    err = capsys.readouterr().err
    assert rc != 0 and written == {}
    assert "no CUDA" in err and "bench gpu --tiny" in err


@pytest.mark.timeout(600)
def test_tiny_runs_every_model_and_writes_positive_figures(tmp_path: Path) -> None:
    rc, result = _run(tmp_path, "--tiny", "--layers", "model", "--batch-sizes", "1,2", "--repeats", "1")
    assert rc == 0
    assert result["tiny"] is True and result["device"] == "cpu" and result["layers_measured"] == ["model"]
    assert "pictures are noise" in result["weights"]
    models = result["model_layer"]["models"]
    assert list(models) == list(table.SUBJECTS)
    for name, entry in models.items():
        assert "skipped" not in entry, (name, entry)
        assert [r["batch_size"] for r in entry["rows"]] == [1, 2], name
        for row in entry["rows"]:
            assert row["images_per_s"] > 0 and row["p50_ms"] > 0 and row["peak_rss_mib"] > 0 and row["calls"] >= 1, (name, row)
        assert result["summary"][name]["per_image_ips"] > 0
        assert result["summary"][name]["bare_best_ips"] >= result["summary"][name]["per_image_ips"]


@pytest.mark.timeout(600)
def test_without_ray_or_diffusers_the_harness_says_what_it_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a GPU machine without them: imports fail
    monkeypatch.setitem(sys.modules, "diffusers", None)
    rc, result = _run(tmp_path, "--tiny", "--subjects", "stylize,sd-text-to-image", "--batch-sizes", "1", "--repeats", "1")
    assert rc == 0
    assert result["layers_measured"] == ["model"]
    assert result["served_layer"] == {"skipped": "Ray not installed: only the model layer was measured"}
    assert result["model_layer"]["models"]["sd-text-to-image"]["skipped"] == "skipped: diffusers not installed"
    assert result["model_layer"]["models"]["stylize"]["rows"][0]["images_per_s"] > 0


def test_peak_rss_is_measured_per_span_not_over_the_process_life() -> None:
    if not table.reset_peak_rss():
        pytest.skip("this kernel cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    before = table.peak_rss_bytes()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page touched
    during = table.peak_rss_bytes()
    del block
    assert table.reset_peak_rss()
    after = table.peak_rss_bytes()
    assert during - before > 200 * 2**20
    assert during - after > 200 * 2**20


def _layer(rows: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    return {
        "models": {
            name: {"rows": [{"batch_size": b, "images_per_s": ips} for b, ips in pairs]} for name, pairs in rows.items()
        }
    }


def test_summary_sets_served_against_per_image_and_the_same_batch_bare() -> None:
    layer = _layer({"stylize": [(1, 10.0), (2, 18.0), (4, 30.0), (8, 40.0)], "sd-text-to-image": [(1, 0.5), (2, 0.8)]})
    served = {
        "models": {
            "stylize": {
                "levels": [{"concurrency": 1, "ips": 9.0, "mean_batch_size": 1.0}, {"concurrency": 32, "ips": 33.0, "mean_batch_size": 5.2}]
            },
            "sd-text-to-image": {"skipped": "skipped: diffusers not installed"},
        }
    }
    summary = gpu.summarise(layer, served)
    s = summary["stylize"]
    assert s["served_best_ips"] == 33.0 and s["served_over_per_image"] == 3.3
    assert s["bare_same_batch"] == 4 and s["served_over_bare_same_batch"] == 1.1  # 33 / 30: batch 4, not 8
    assert s["target_served_over_per_image"] == 3.0 and s["target_served_over_bare_same_batch"] == 0.9
    assert summary["sd-text-to-image"]["target_served_over_per_image"] == 1.5
    assert summary["sd-text-to-image"]["served"] == "skipped: diffusers not installed"


def test_markdown_has_one_line_per_batch_size_and_says_what_was_skipped() -> None:
    results = {
        "settings": {"device": "cpu"},
        "models": {
            "animeganv2": {
                "work": "512x512",
                "rows": [
                    {"batch_size": 1, "images_per_s": 0.5, "p50_ms": 2000.0, "peak_rss_mib": 700.0},
                    {"batch_size": 2, "skipped": "out of memory"},
                ],
            },
            "sd-img2img": {"work": "256x256", "skipped": "skipped: diffusers not installed", "rows": []},
        },
    }
    lines = table.markdown(results).splitlines()
    assert lines[2] == "| animeganv2 | 512x512 | 1 | 0.5 | 2 s | 700 MiB |"
    assert "out of memory" in lines[3] and "diffusers not installed" in lines[4]
