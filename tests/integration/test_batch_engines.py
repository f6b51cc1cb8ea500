"""`stylefleet batch` through both engines, for every kind the service runs: the HTTP engine
against the live test app, the Ray Data engine from the same config. Each must write the same
bytes and the same manifest (seeds included); the Ray Data engine loads its models with the
replicas' own loader, so a kind it could not load (pinned checksums, diffusion options) or run
(a composed kind) fails here. Diffusion images are compared within the float rounding of the
batches each engine forms (docs/generative.md "Batching and seeds")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from stylefleet.tools import cli
from tests import samples
from tests.integration.conftest import genai_application

pytestmark = pytest.mark.integration


def _inputs(folder: Path, photos: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    return folder


def _small(pixels: np.ndarray, side: int) -> np.ndarray:
    return samples.scaled(pixels, side / max(pixels.shape[:2]))


def _manifest(out: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in ("seconds", "finished_at")} for r in records), key=lambda r: r["input"])


def _assert_same_output(ray: Path, http: Path, *, diffusion: bool) -> None:
    """The same bytes; a Stable Diffusion image may differ by the float rounding of the batch it
    ran in (each engine forms its own batches), so it is compared pixel by pixel within that bound."""
    if not diffusion:
        assert ray.read_bytes() == http.read_bytes(), ray.name
        return
    with Image.open(ray) as a, Image.open(http) as b:
        assert (a.format, a.mode, a.size) == (b.format, b.mode, b.size), ray.name
        assert samples.same_up_to_batch_rounding(np.asarray(a), np.asarray(b)), ray.name


def _both_engines(
    tmp_path: Path, src: Path, url: str, config: dict[str, Any], args: list[str], *, ok: int, diffusion: bool = False
) -> list[dict[str, Any]]:
    """Run both engines on ``src``; assert the same files, bytes (pixels, for diffusion images)
    and records; return the records."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    expected_status = 0 if ok == len(list(src.iterdir())) else 1
    assert cli.main(["batch", str(src), "-o", str(tmp_path / "http"), "--url", url, "--concurrency", "2", *args]) == expected_status
    assert (
        cli.main(["batch", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray-data", "--config", str(config_file), *args])
        == expected_status
    )
    written = sorted(p.name for p in (tmp_path / "http").iterdir() if p.suffix in (".png", ".jpg", ".webp"))
    assert len(written) == ok
    assert written == sorted(p.name for p in (tmp_path / "ray").iterdir() if p.suffix in (".png", ".jpg", ".webp"))
    for name in written:
        _assert_same_output(tmp_path / "ray" / name, tmp_path / "http" / name, diffusion=diffusion)
    http = _manifest(tmp_path / "http")
    assert _manifest(tmp_path / "ray") == http
    return http


PHOTOS = {
    "astronaut.jpg": samples.encoded(_small(samples.astronaut(), 160), "JPEG", quality=90),
    "coffee.png": samples.encoded(_small(samples.coffee(), 160)),
}


@pytest.mark.parametrize(
    ("style", "extra"),
    [
        ("ink-wash", ["--param", "strength=0.7"]),
        ("restyle", ["--param", "preserve_color=true"]),
        ("remove-background", ["--param", "threshold=128", "--param", "bg_color=#336699", "--param", "erode_px=1"]),
        ("cutout-avatar", ["--format", "webp"]),
    ],
    ids=["painting", "restyle", "remove-background-params", "remove-background-preset"],
)
def test_image_kinds_give_the_same_bytes_through_both_engines(
    serve_app: dict[str, Any], tmp_path: Path, style: str, extra: list[str]
) -> None:
    src = _inputs(tmp_path / "in", PHOTOS)
    if style == "restyle":
        painting = tmp_path / "painting.png"
        painting.write_bytes(samples.encoded(_small(samples.cat(), 128)))
        extra = [*extra, "--file", f"style_image={painting}"]
    records = _both_engines(tmp_path, src, serve_app["url"], serve_app["config"], ["--style", style, *extra], ok=2)
    assert all(r["status"] == "ok" and r["seed"] is None and r["model_sha256"] for r in records)


def test_id_photo_gives_the_same_bytes_and_errors_through_both_engines(serve_app: dict[str, Any], tmp_path: Path) -> None:
    src = _inputs(
        tmp_path / "in",
        {
            "astronaut.png": samples.encoded(samples.astronaut()),
            "camera-man.jpg": samples.encoded(samples.camera(), "JPEG", quality=92),
            "coffee.png": samples.encoded(_small(samples.coffee(), 256)),  # no face: a failed record, alike
        },
    )
    records = _both_engines(
        tmp_path, src, serve_app["url"], serve_app["config"], ["--style", "id-photo", "--param", "size=1-inch", "--format", "jpeg"], ok=2
    )
    by_input = {r["input"]: r for r in records}
    assert by_input["coffee.png"]["status"] == "failed" and by_input["coffee.png"]["error"]["code"] == "no_face"
    assert by_input["astronaut.png"]["model_sha256"].count("+") == 2  # u2netp + the two cascades


@pytest.fixture(scope="module")
def genai_config(genai_app: dict[str, Any]) -> dict[str, Any]:
    """The generative app as a serve config of its own (the Ray Data engine's --config)."""
    return {"applications": [genai_application(genai_app["models_dir"])]}


@pytest.mark.parametrize(
    ("style", "seed"),
    [("tiny-img2img", "42"), ("tiny-controlnet", "99"), ("tiny-anime", None)],
    ids=["img2img", "controlnet", "animeganv2"],
)
def test_generative_image_kinds_give_the_same_images_and_seeds_through_both_engines(
    genai_app: dict[str, Any], genai_config: dict[str, Any], tmp_path: Path, style: str, seed: str | None
) -> None:
    src = _inputs(
        tmp_path / "in", {k: samples.encoded(_small(samples.astronaut(), 64)) if "astronaut" in k else v for k, v in PHOTOS.items()}
    )
    records = _both_engines(tmp_path, src, genai_app["url"], genai_config, ["--style", style], ok=2, diffusion=style != "tiny-anime")
    assert [r["seed"] for r in records] == [seed, seed]


def test_a_prompt_list_records_each_lines_seed_through_both_engines(
    genai_app: dict[str, Any], genai_config: dict[str, Any], tmp_path: Path
) -> None:
    prompts = tmp_path / "in" / "prompts.jsonl"
    prompts.parent.mkdir()
    prompts.write_text('{"prompt": "a kite", "seed": 7}\n{"prompt": "a boat"}\n{"prompt": "a tree", "seed": 31}\n')
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(genai_config))
    assert cli.main(["batch", str(prompts), "-o", str(tmp_path / "http"), "--url", genai_app["url"], "--style", "tiny-t2i-wide"]) == 0
    assert (
        cli.main(
            [
                "batch",
                str(prompts),
                "-o",
                str(tmp_path / "ray"),
                "--engine",
                "ray-data",
                "--config",
                str(config_file),
                "--style",
                "tiny-t2i-wide",
            ]
        )
        == 0
    )
    http = _manifest(tmp_path / "http")
    assert _manifest(tmp_path / "ray") == http
    assert [r["seed"] for r in http] == ["7", "6", "31"]  # a line's own seed, else the style's default (5) + its index
    for r in http:
        _assert_same_output(tmp_path / "ray" / r["output"], tmp_path / "http" / r["output"], diffusion=True)
