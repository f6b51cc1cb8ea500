"""``POST /v1/jobs`` with a prompt list, over a fake diffusion backend. No Ray."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from stylefleet.config import JobsConfig, Limits
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs.manager import JobManager
from stylefleet.spec import AppSpec
from stylefleet.storage import Storage
from tests import samples
from tests.samples import ROOT
from tests.unit.fakes import FakeBackend, echo_prompt

GENAI = AppSpec.from_args(yaml.safe_load((ROOT / "serve_config.genai.yaml").read_text())["applications"][0]["args"])


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(echo_prompt)


@pytest.fixture()
def api(backend: FakeBackend, tmp_path: Path) -> Iterator[TestClient]:
    storage = Storage(str(tmp_path / "jobs"))
    core = RouterCore(Catalog(GENAI), backend, max_pixels=10_000_000)
    manager = JobManager(core, storage, JobsConfig(storage=storage.uri, lease_timeout_s=3.0), max_item_bytes=1_000_000)
    app = create_api(core, Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000), jobs=manager)
    with TestClient(app) as client:
        yield client
        manager.stop()


def _post(api: TestClient, style: str, prompts: str | None = None, name: str = "prompts.txt", files: list | None = None, **fields: str):
    files = list(files or [])
    if prompts is not None:
        files.append(("prompts", (name, prompts.encode(), "text/plain")))
    return api.post("/v1/jobs", files=files, data={"style": style, **fields})


def _finished(api: TestClient, job_id: str) -> dict[str, Any]:
    for _ in range(400):  # bounded: 20 s at most
        body = api.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ended: {body}")


def _result(api: TestClient, job_id: str) -> tuple[zipfile.ZipFile, list[dict[str, Any]]]:
    zf = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job_id}/result").content))
    return zf, [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]


def test_a_prompt_list_job_makes_one_image_per_line_with_reproducible_params(api: TestClient) -> None:
    r = _post(api, "product-shot", "a red kettle\na blue lamp\n")
    assert r.status_code == 202, r.text
    body = _finished(api, r.json()["id"])
    assert (body["status"], body["total"], body["succeeded"]) == ("succeeded", 2, 2)
    assert [i["name"] for i in body["items"]] == ["prompts.txt:1", "prompts.txt:2"]
    zf, manifest = _result(api, r.json()["id"])
    assert sorted(n for n in zf.namelist() if n.endswith(".png")) == ["0001-a-red-kettle.png", "0002-a-blue-lamp.png"]
    second = manifest[1]
    assert second["params"] == {"prompt": "a blue lamp", "seed": "1235", "steps": "25"}  # seed: 1234 (the preset's) + 1
    assert (second["seed"], second["model_sha256"], second["nsfw"]) == (1235, "sd-sha", False)
    made = json.loads(zf.read("0002-a-blue-lamp.png"))
    assert (made["prompt"], made["seed"], made["steps"]) == ("a blue lamp", 1235, 25)


def test_the_jobs_seed_and_a_lines_own_params(api: TestClient) -> None:
    prompts = '{"prompt": "a"}\n{"prompt": "b", "seed": 5, "negative_prompt": "fog"}\n{"prompt": "c"}\n'
    r = _post(api, "concept-art", prompts, "p.jsonl", seed="100")
    _finished(api, r.json()["id"])
    _, manifest = _result(api, r.json()["id"])
    assert [m["seed"] for m in manifest] == [100, 5, 102]
    assert [m["params"]["negative_prompt"] for m in manifest] == [
        "photo, blurry, low quality, text, watermark",
        "fog",
        "photo, blurry, low quality, text, watermark",
    ]


def test_bad_lines_fail_alone(api: TestClient) -> None:
    prompts = '{"prompt": "a"}\nnot json\n{"prompt": "c", "steps": 999}\n{"prompt": "d", "negative_prompt": "x"}\n{"prompt": "e"}\n'
    body = _finished(api, _post(api, "product-shot", prompts, "p.jsonl").json()["id"])
    assert body["status"] == "succeeded"
    assert [i["status"] for i in body["items"]] == ["ok", "failed", "failed", "failed", "ok"]
    codes = [i["error"]["code"] for i in body["items"] if i["error"]]
    assert codes == ["invalid_prompt_line", "invalid_params", "invalid_prompt_line"]  # product-shot fixes its negative prompt


def test_a_flagged_image_is_marked_in_the_manifest(api: TestClient) -> None:
    r = _post(api, "product-shot", "a cat\nnsfw thing\n")
    _finished(api, r.json()["id"])
    assert [m["nsfw"] for m in _result(api, r.json()["id"])[1]] == [False, True]


@pytest.mark.parametrize(
    ("style", "prompts", "files", "needle"),
    [
        ("product-shot", "a", [("images", ("a.png", samples.encoded(samples.cat()), "image/png"))], "no images"),
        ("watercolor", "a", None, "takes images"),
        ("product-shot", "\n\n", None, "no prompts"),
    ],
    ids=["prompts-and-images", "prompts-to-img2img", "empty-list"],
)
def test_wrong_inputs_are_422(api: TestClient, style: str, prompts: str | None, files: list | None, needle: str) -> None:
    r = _post(api, style, prompts, files=files)
    assert r.status_code == 422 and needle in r.json()["error"]["message"]


def test_a_text_to_image_job_without_prompts_is_422(backend: FakeBackend, tmp_path: Path) -> None:
    import asyncio

    from stylefleet.errors import InvalidParams

    storage = Storage(str(tmp_path / "jobs"))
    manager = JobManager(
        RouterCore(Catalog(GENAI), backend, max_pixels=10_000_000), storage, JobsConfig(storage=storage.uri), max_item_bytes=1_000
    )
    with pytest.raises(InvalidParams, match="send a 'prompts' file"):
        asyncio.run(manager.create("product-shot", {}, client_key=None, images=[], archive=None, shared={}))


def test_an_img2img_job_takes_images_and_a_prompt(api: TestClient, backend: FakeBackend) -> None:
    files = [("images", (f"p{i}.png", samples.encoded(samples.cat()), "image/png")) for i in range(2)]
    r = _post(api, "watercolor", files=files, prompt="a harbour")
    assert _finished(api, r.json()["id"])["succeeded"] == 2
    assert {req.params["prompt"] for req in backend.requests} == {"a harbour"}
    # the picture goes with the prompt: decoded by the router, or still encoded where the replicas decode
    assert [set(req.images) | set(getattr(req, "files", {})) for req in backend.requests] == [{"image"}, {"image"}]
