"""Batch work against the real service: the CLI (resume after SIGINT), /v1/jobs (archive, restart
of the Serve application, zip slip and bombs) and the Ray Data engine's bytes vs the HTTP path's."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from stylefleet.tools import cli
from tests import samples
from tests.integration.conftest import APP
from tests.samples import ROOT
from tests.unit.test_archive import make_zip

pytestmark = pytest.mark.integration

STYLE = "frost"  # a painting style: the cheapest model on small images


def _small_images(n: int, side: int) -> list[bytes]:
    """Real photos (cropped and scaled) and generated pictures, ``side`` px on the longer side."""
    photos = [samples.astronaut(), samples.cat(), samples.coffee()]
    rng = np.random.default_rng(6)
    out = []
    for i in range(n):
        if i % 4 == 3:
            y, x = np.mgrid[0:side, 0:side]
            pixels = np.dstack([(x * 255 // side), (y * 255 // side), rng.integers(0, 255, (side, side))]).astype(np.uint8)
        else:
            photo = photos[i % 3]
            top, left = (i * 7) % 64, (i * 11) % 64
            img = Image.fromarray(photo[top:, left:])
            img.thumbnail((side, side))
            pixels = np.asarray(img)
        out.append(samples.encoded(pixels, "PNG" if i % 2 else "JPEG"))
    return out


CORRUPT = {"c/broken.jpg": samples.truncated_jpeg(samples.cat()), "b/notes.png": samples.NOT_AN_IMAGE, "empty.png": b""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 files in a small tree: 57 images (real and generated, 96 px) and 3 corrupt ones."""
    root = tmp_path_factory.mktemp("batch-in")
    for i, data in enumerate(_small_images(57, 96)):
        path = root / "abc"[i % 3] / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for name, data in CORRUPT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _batch_cmd(src: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stylefleet.tools.cli", "batch", str(src), "-o", str(out), "--style", STYLE, "--url", url, *extra]


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_folder_of_60_with_3_corrupt_gives_57_outputs_3_failures_and_exit_1(folder: Path, base_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(_batch_cmd(folder, out, base_url), capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 1, proc.stderr[-2000:]
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(outputs) == 57 and "a/img00.png" in outputs and "b/img01.png" in outputs  # the tree is mirrored
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["input"] for f in failures) == sorted(CORRUPT)
    assert {f["error"]["code"] for f in failures} == {"invalid_image"}
    assert "failures.jsonl" in proc.stderr and "57 ok, 3 failed" in proc.stderr
    ok = next(r for r in _manifest(out) if r["status"] == "ok")
    assert ok["variant"] == "default" and len(ok["model_sha256"]) == 64 and ok["params"] == {"format": "png"}


def test_an_interrupted_run_resumes_and_processes_every_item_exactly_once(folder: Path, base_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(_batch_cmd(folder, out, base_url, "--concurrency", "1"), stderr=subprocess.PIPE, text=True, env=_env())
    lines = 0
    for _ in range(6000):  # bounded: 10 minutes at most; SIGINT once about a third is recorded
        manifest = out / "manifest.jsonl"
        lines = len(manifest.read_text().splitlines()) if manifest.exists() else 0
        if lines >= 20 or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    interrupted_at = len(_manifest(out))
    assert 20 <= interrupted_at < 60 and "resume" in stderr

    again = subprocess.run(_batch_cmd(folder, out, base_url), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 1, again.stderr[-2000:]
    records = _manifest(out)
    assert len(records) == 60 and set(Counter(r["input"] for r in records).values()) == {1}
    assert len(list(out.rglob("*.png"))) == 57 and not list(out.rglob(".*.tmp"))


def _wait_final(client: httpx.Client, job_id: str, limit_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            r = client.get(f"/v1/jobs/{job_id}")
        except httpx.TransportError:  # the application is restarting
            time.sleep(0.5)
            continue
        if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed", "canceled"):
            return r.json()
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not end in {limit_s}s")


def test_a_40_image_zip_job_completes_with_its_result_zip(client: httpx.Client) -> None:
    images = _small_images(40, 64)
    archive = make_zip({f"set/{i:02d}.png": data for i, data in enumerate(images)}).getvalue()
    r = client.post("/v1/jobs", files={"archive": ("photos.zip", archive, "application/zip")}, data={"style": STYLE})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 40
    with client.stream("GET", job["urls"]["events"]) as events:
        text = "".join(events.iter_text())
    assert "event: end" in text
    body = client.get(job["urls"]["self"]).json()
    assert (body["status"], body["done"], body["succeeded"]) == ("succeeded", 40, 40)
    result = client.get(job["urls"]["result"])
    assert result.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(result.content))
    outputs = [n for n in zf.namelist() if n.startswith("set/")]
    assert len(outputs) == 40 and all(n.endswith(".png") for n in outputs)
    assert len(zf.read("manifest.jsonl").decode().splitlines()) == 40 and zf.read("failures.jsonl") == b""
    assert max(Image.open(io.BytesIO(zf.read(outputs[0]))).size) == 64


def test_a_300_byte_cjk_file_name_among_normal_ones_completes_and_keeps_its_name(
    serve_app: dict[str, Any], client: httpx.Client
) -> None:
    long_name = "写真" * 50 + ".png"  # 304 bytes of UTF-8: over any file system's name limit
    names = ["a.png", long_name, "b.png"]
    files = [("images", (name, data, "image/png")) for name, data in zip(names, _small_images(3, 64))]
    r = client.post("/v1/jobs", files=files, data={"style": STYLE})
    assert r.status_code == 202, r.text
    body = _wait_final(client, r.json()["id"])
    assert (body["status"], body["succeeded"]) == ("succeeded", 3), body
    assert [i["name"] for i in body["items"]] == names
    zf = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{body['id']}/result").content))
    manifest = [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]
    assert [m["input"] for m in manifest] == names and all(m["status"] == "ok" for m in manifest)
    outputs = [m["output"] for m in manifest]
    assert outputs[0] == "a.png" and outputs[2] == "b.png" and outputs[1].startswith("写真写真") and len(outputs[1].encode()) <= 200
    assert sorted(zf.namelist()) == sorted([*outputs, "manifest.jsonl", "failures.jsonl"])
    storage = Path(serve_app["config"]["applications"][0]["args"]["jobs"]["storage"]) / body["id"]
    assert (storage / "outputs" / outputs[1]).stat().st_mode & 0o077 == 0  # private to the service's user
    assert client.delete(f"/v1/jobs/{body['id']}").json()["deleted"] is True and not storage.exists()


def test_a_job_interrupted_by_restarting_the_application_resumes_with_nothing_lost_or_redone(
    serve_app: dict[str, Any], client: httpx.Client
) -> None:
    from ray import serve

    images = _small_images(60, 192)
    files = [("images", (f"p{i:02d}.png", data, "image/png")) for i, data in enumerate(images)]
    job = client.post("/v1/jobs", files=files, data={"style": STYLE}).json()
    storage = Path(serve_app["config"]["applications"][0]["args"]["jobs"]["storage"]) / job["id"]
    for _ in range(1200):  # bounded: 2 minutes at most
        if len(list((storage / "results").glob("*.json"))) >= 5:
            break
        time.sleep(0.1)
    serve.delete(APP)  # graceful: the router releases the job's lease on the way down
    done_at_restart = len(list((storage / "results").glob("*.json")))
    serve_app["cluster"].deploy(serve_app["config"], timeout_s=300)
    assert 5 <= done_at_restart < 60  # it really was interrupted
    body = _wait_final(client, job["id"])
    assert (body["status"], body["done"], body["succeeded"]) == ("succeeded", 60, 60)
    manifest = zipfile.ZipFile(io.BytesIO(client.get(job["urls"]["result"]).content)).read("manifest.jsonl").decode().splitlines()
    inputs = Counter(json.loads(line)["input"] for line in manifest)
    assert len(inputs) == 60 and set(inputs.values()) == {1}


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (make_zip({"ok.png": samples.encoded(samples.cat()), "../../../tmp/escaped.png": b"x"}).getvalue(), 400, "unsafe_archive"),
        (make_zip({"zeros.png": b"\0" * (32 << 20)}).getvalue(), 413, "archive_too_large"),
    ],
    ids=["zip-slip", "zip-bomb"],
)
def test_zip_slip_and_zip_bomb_are_refused(serve_app: dict[str, Any], client: httpx.Client, archive: bytes, status: int, code: str) -> None:
    storage = Path(serve_app["config"]["applications"][0]["args"]["jobs"]["storage"])
    before = set(os.listdir(storage))
    r = client.post("/v1/jobs", files={"archive": ("a.zip", archive, "application/zip")}, data={"style": STYLE})
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert set(os.listdir(storage)) == before


def test_the_ray_data_engine_writes_the_same_bytes_and_manifest_as_the_http_path(
    serve_app: dict[str, Any], folder: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    for path in sorted(folder.rglob("img*"))[:20]:
        (src / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        (src / path.relative_to(folder)).write_bytes(path.read_bytes())
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_app["config"]))
    assert cli.main(["batch", str(src), "-o", str(tmp_path / "http"), "--style", STYLE, "--url", serve_app["url"]]) == 0
    args = ["batch", str(src), "-o", str(tmp_path / "ray"), "--style", STYLE, "--engine", "ray-data", "--config", str(config)]
    assert cli.main(args) == 0
    http_files = sorted(p.relative_to(tmp_path / "http").as_posix() for p in (tmp_path / "http").rglob("*.png"))
    assert len(http_files) == 20
    for rel in http_files:
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "http" / rel).read_bytes(), rel

    def comparable(out: Path) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in r.items() if k not in ("seconds", "finished_at")} for r in _manifest(out)), key=lambda r: r["input"]
        )

    assert comparable(tmp_path / "ray") == comparable(tmp_path / "http")
    # and the ray-data engine resumes like the http one: nothing left to do
    assert (
        cli.main(["batch", str(src), "-o", str(tmp_path / "ray"), "--style", STYLE, "--engine", "ray-data", "--config", str(config)]) == 0
    )
    assert len(_manifest(tmp_path / "ray")) == 20
