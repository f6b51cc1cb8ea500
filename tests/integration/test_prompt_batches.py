"""Prompt lists through the real service (tiny Stable Diffusion): the CLI's two engines and jobs."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from stylefleet.tools import cli
from tests.integration.conftest import genai_application

pytestmark = pytest.mark.integration

STYLE = "tiny-t2i"
PROMPTS = "a red bicycle\na lighthouse at night\na bowl of fruit\n"


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same image: batched float maths may move a few values by one level, never more."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.01


def test_a_prompt_list_through_both_engines_gives_the_same_images_and_manifest(genai_app: dict[str, Any], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    config = tmp_path / "genai.yaml"
    config.write_text(yaml.safe_dump({"applications": [genai_application(genai_app["models_dir"])]}))
    assert cli.main(["batch", str(prompts), "-o", str(tmp_path / "http"), "--style", STYLE, "--url", genai_app["url"]]) == 0
    assert (
        cli.main(["batch", str(prompts), "-o", str(tmp_path / "ray"), "--style", STYLE, "--engine", "ray-data", "--config", str(config)])
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "http").glob("*.png"))
    assert names == ["0001-a-red-bicycle.png", "0002-a-lighthouse-at-night.png", "0003-a-bowl-of-fruit.png"]
    for name in names:
        assert _close(_pixels((tmp_path / "ray" / name).read_bytes()), _pixels((tmp_path / "http" / name).read_bytes())), name

    def comparable(out: Path) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in r.items() if k not in ("seconds", "finished_at")} for r in _manifest(out)), key=lambda r: r["input"]
        )

    http = comparable(tmp_path / "http")
    assert comparable(tmp_path / "ray") == http
    assert [r["params"]["seed"] for r in http] == ["1234", "1235", "1236"] and http[0]["model_sha256"]
    # a re-run skips every line, on either engine
    assert (
        cli.main(["batch", str(prompts), "-o", str(tmp_path / "ray"), "--style", STYLE, "--engine", "ray-data", "--config", str(config)])
        == 0
    )
    assert len(_manifest(tmp_path / "ray")) == 3


def test_re_running_one_line_with_its_manifest_params_gives_its_image(genai_app: dict[str, Any], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    assert cli.main(["batch", str(prompts), "-o", str(tmp_path / "out"), "--style", STYLE, "--url", genai_app["url"]]) == 0
    record = next(r for r in _manifest(tmp_path / "out") if r["input"] == "prompts.txt:2")
    again = httpx.post(f"{genai_app['url']}/v1/styles/{STYLE}", data=record["params"], timeout=120)
    assert again.status_code == 200
    assert _close(_pixels(again.content), _pixels((tmp_path / "out" / record["output"]).read_bytes()))


def test_a_prompt_list_job_runs_with_its_manifest(genai_app: dict[str, Any]) -> None:
    with httpx.Client(base_url=genai_app["url"], timeout=120) as client:
        prompts = '{"prompt": "a kite", "seed": 7}\nnot json\n{"prompt": "a boat"}\n'
        r = client.post("/v1/jobs", files={"prompts": ("p.jsonl", prompts.encode(), "application/jsonl")}, data={"style": STYLE})
        assert r.status_code == 202, r.text
        for _ in range(600):  # bounded: 60 s
            body = client.get(f"/v1/jobs/{r.json()['id']}").json()
            if body["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert (body["status"], body["succeeded"], body["failed"]) == ("succeeded", 2, 1)
        zf = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{r.json()['id']}/result").content))
        manifest = [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]
        assert [(m["input"], m["status"], m["params"].get("seed")) for m in manifest] == [
            ("p.jsonl:1", "ok", "7"),
            ("p.jsonl:2", "failed", None),
            ("p.jsonl:3", "ok", "1236"),
        ]
        assert _pixels(zf.read(manifest[0]["output"])).shape == (64, 64, 3)
