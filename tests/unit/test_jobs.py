"""``/v1/jobs`` over a fake backend: the contract, events, result zip, cancel, resume. No Ray."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from stylefleet.config import JobsConfig, Limits
from stylefleet.errors import InvalidImage, ModelUnavailable, Overloaded
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs.manager import JobManager
from stylefleet.spec import AppSpec
from stylefleet.storage import Storage
from tests import samples
from tests.samples import ROOT
from tests.unit.fakes import FakeBackend, from_pixels
from tests.unit.full_disk import fill
from tests.unit.test_archive import make_zip

CONFIG = AppSpec.from_args(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])


def _images(n: int, corrupt: int = 0) -> list[bytes]:
    out = [samples.encoded(samples.cat()[: 40 + i, :48]) for i in range(n - corrupt)]
    return out + [samples.NOT_AN_IMAGE] * corrupt


def _manager(backend: FakeBackend, storage: Storage, **jobs: Any) -> JobManager:
    core = RouterCore(Catalog(CONFIG), backend, max_pixels=10_000_000)
    config = JobsConfig(storage=storage.uri, **{"lease_timeout_s": 3.0, **jobs})
    return JobManager(core, storage, config, max_item_bytes=1_000_000)


@pytest.fixture()
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "jobs"))


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend(from_pixels)


@pytest.fixture()
def api(backend: FakeBackend, storage: Storage) -> Iterator[TestClient]:
    manager = _manager(backend, storage)
    app = create_api(manager.core, Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000), jobs=manager)
    with TestClient(app) as client:  # one event loop for the whole test: jobs run in the background
        yield client
        manager.stop()


def _post(api: TestClient, files: list[tuple[str, tuple[str, bytes, str]]], **fields: str):
    return api.post("/v1/jobs", files=files, data={"style": "frost", **fields})


def _wait(api: TestClient, job_id: str, final: bool = True, done: int = 0) -> dict[str, Any]:
    for _ in range(400):  # bounded: 20 s at most
        body = api.get(f"/v1/jobs/{job_id}").json()
        if (final and body["status"] in ("succeeded", "failed", "canceled")) or (not final and body["done"] >= done):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {body}")


def _image_files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"photo{i}.png", data, "image/png")) for i, data in enumerate(images)]


def test_a_job_is_accepted_with_its_urls(api: TestClient) -> None:
    r = _post(api, _image_files(_images(3)))
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) >= {"id", "status", "style", "total", "urls"}
    assert body["style"] == "frost" and body["total"] == 3 and body["status"] in ("queued", "running")
    assert body["urls"] == {
        "self": f"/v1/jobs/{body['id']}",
        "events": f"/v1/jobs/{body['id']}/events",
        "result": f"/v1/jobs/{body['id']}/result",
    }


def test_a_job_runs_to_the_end_with_per_item_status_and_isolated_failures(api: TestClient) -> None:
    job = _post(api, _image_files(_images(5, corrupt=1))).json()
    body = _wait(api, job["id"])
    assert {k: body[k] for k in ("status", "total", "done", "succeeded", "failed")} == {
        "status": "succeeded",
        "total": 5,
        "done": 5,
        "succeeded": 4,
        "failed": 1,
    }
    assert body["created_at"] and body["started_at"] and body["finished_at"]
    assert [i["status"] for i in body["items"]] == ["ok"] * 4 + ["failed"]
    assert body["items"][4]["error"]["code"] == "invalid_image" and body["items"][0]["error"] is None


def test_the_result_zip_holds_outputs_manifest_and_failures(api: TestClient) -> None:
    job = _post(api, _image_files(_images(4, corrupt=1)), format="jpeg").json()
    _wait(api, job["id"])
    r = api.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(zf.namelist()) == ["failures.jsonl", "manifest.jsonl", "photo0.jpg", "photo1.jpg", "photo2.jpg"]
    manifest = [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]
    assert [m["input"] for m in manifest] == ["photo0.png", "photo1.png", "photo2.png", "photo3.png"]
    assert (
        manifest[0]["model_sha256"] == "model-sha" and manifest[0]["variant"] == "default" and manifest[0]["params"] == {"format": "jpeg"}
    )
    assert len(zf.read("failures.jsonl").decode().splitlines()) == 1


def test_an_archive_job_names_outputs_by_member_path(api: TestClient) -> None:
    images = _images(3)
    archive = make_zip({"a/x.png": images[0], "a/b/y.png": images[1], "z.jpg": images[2]}).getvalue()
    job = _post(api, [("archive", ("photos.zip", archive, "application/zip"))]).json()
    assert job["total"] == 3
    _wait(api, job["id"])
    names = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/result").content)).namelist()
    assert sorted(names) == ["a/b/y.png", "a/x.png", "failures.jsonl", "manifest.jsonl", "z.png"]


def test_an_archive_whose_output_names_collide_keeps_every_result(api: TestClient) -> None:
    images = _images(3)
    archive = make_zip({"x.jpg": images[0], "x.png": images[1], "x.jpg.png": images[2]}).getvalue()
    job = _post(api, [("archive", ("photos.zip", archive, "application/zip"))]).json()
    assert _wait(api, job["id"])["succeeded"] == 3
    zf = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/result").content))
    outputs = [n for n in zf.namelist() if not n.endswith(".jsonl")]
    assert len(outputs) == 3 == len(set(outputs))
    assert len({zf.read(n) for n in outputs}) == 3  # three different results, none overwritten


def test_events_stream_progress_and_end(api: TestClient) -> None:
    job = _post(api, _image_files(_images(3))).json()
    with api.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert events[-1].startswith("event: end") and all(e.startswith("event: progress") for e in events[:-1])
    last = json.loads(events[-1].split("data: ", 1)[1])
    assert last["status"] == "succeeded" and last["done"] == 3
    progress = json.loads(events[-2].split("data: ", 1)[1])
    assert [i["status"] for i in progress["items"]] == ["ok"] * 3  # a page can show each item as it ends


def test_result_before_the_end_is_409_and_delete_cancels(api: TestClient, backend: FakeBackend) -> None:
    backend.gate = threading.Semaphore(0)
    job = _post(api, _image_files(_images(3))).json()
    r = api.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
    r = api.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    backend.gate.release(3)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    assert api.get(f"/v1/jobs/{job['id']}/result").status_code == 200


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/jobs/0123456789abcdef0123456789abcdef", "get"),
        ("/v1/jobs/../../etc", "get"),
        ("/v1/jobs/nope/result", "get"),
        ("/v1/jobs/nope", "delete"),
    ],
)
def test_unknown_jobs_are_404(api: TestClient, path: str, method: str) -> None:
    r = getattr(api, method)(path)
    assert r.status_code == 404 and r.json()["error"]["code"] in ("unknown_job", "not_found")


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"style": "no-such"}, 404, "unknown_style"),
        ({"strength": "9"}, 422, "invalid_params"),
        ({"variant": "zz"}, 422, "invalid_params"),
        ({"style": ""}, 422, "invalid_params"),
    ],
)
def test_bad_jobs_are_refused_before_anything_is_stored(
    api: TestClient, storage: Storage, fields: dict[str, str], status: int, code: str
) -> None:
    r = _post(api, _image_files(_images(1)), **fields)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert storage.listdir() == []


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (make_zip({"ok.png": b"x", "../../escape.png": b"x"}).getvalue(), 400, "unsafe_archive"),
        (make_zip({"zeros.png": b"\0" * (6 << 20)}).getvalue(), 413, "archive_too_large"),
        (b"plain text", 400, "invalid_archive"),
    ],
    ids=["zip-slip", "zip-bomb", "not-a-zip"],
)
def test_refused_archives_leave_nothing_behind(backend: FakeBackend, tmp_path: Path, archive: bytes, status: int, code: str) -> None:
    storage = Storage(str(tmp_path / "jobs"))
    manager = _manager(backend, storage, max_archive_uncompressed_bytes=4 << 20)
    app = create_api(manager.core, Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000), jobs=manager)
    with TestClient(app) as api:
        r = api.post("/v1/jobs", files=[("archive", ("a.zip", archive, "application/zip"))], data={"style": "frost"})
        manager.stop()
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert storage.listdir() == [] and not (tmp_path / "escape.png").exists()


def test_the_jobs_body_limit_is_its_own(api: TestClient) -> None:
    # 1.5 MB: over the per-image limit of this app (1 MB), well under jobs.max_upload_bytes
    big = [("images", (f"p{i}.png", samples.encoded(samples.astronaut()), "image/png")) for i in range(3)]
    assert sum(len(f[1][1]) for f in big) > 1_000_000
    assert _post(api, big).status_code == 202
    r = api.post("/v1/styles/frost", files={"image": ("a.png", b"\0" * 1_100_000, "image/png")})
    assert r.status_code == 413


def test_a_restarted_manager_resumes_without_redoing_or_losing_items(backend: FakeBackend, storage: Storage) -> None:
    images = _images(8)

    async def scenario() -> tuple[dict[str, Any], Counter[str]]:
        first = _manager(backend, storage, max_in_flight_per_job=2)
        gate = backend.gate = threading.Semaphore(0)
        files = [(f"p{i}.png", io.BytesIO(d)) for i, d in enumerate(images)]
        job = await first.create("frost", {}, client_key=None, images=files, archive=None, shared={})
        await _until(lambda: len(backend.calls) >= 2)  # two items in flight, held
        gate.release(2)  # those two finish; the next two go in flight and are held
        await _until(lambda: len(storage.listdir(f"{job['id']}/results")) >= 2 and len(backend.calls) >= 4)
        first.stop()  # as Serve's graceful shutdown does: in-flight items dropped, lease released
        done_before = len(storage.listdir(f"{job['id']}/results"))
        assert done_before == 2
        backend.gate = None
        gate.release(2)  # let the dropped calls' threads go
        second = _manager(backend, storage)
        second.ensure_started()
        await _until(lambda: _status(storage, job["id"]) == "succeeded")
        second.stop()
        return json.loads(storage.read_text(f"{job['id']}/state.json")), backend.calls_per_image()

    state, calls = asyncio.run(scenario())
    assert state["done"] == 8 and state["succeeded"] == 8
    # every item produced exactly one result; the two in flight at the stop ran twice, unrecorded once
    assert len(calls) == 8 and sum(calls.values()) <= 8 + 2


def test_a_job_leased_by_a_live_replica_is_left_alone(backend: FakeBackend, storage: Storage) -> None:
    async def scenario() -> None:
        owner = _manager(backend, storage)
        job = await owner.create("frost", {}, client_key=None, images=[("p.png", io.BytesIO(_images(1)[0]))], archive=None, shared={})
        owner.stop()
        storage.write_text(f"{job['id']}/lease.json", json.dumps({"owner": "someone-else", "expires_at": time.time() + 60}))
        other = _manager(backend, storage)
        await other._schedule_once()
        assert other._jobs == {} and len(backend.calls) == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("alive", "resumed"), [(False, True), (True, False), (None, False)], ids=["dead", "alive", "unknown"])
def test_a_job_whose_router_is_known_dead_resumes_before_its_lease_ends(
    backend: FakeBackend, storage: Storage, alive: bool | None, resumed: bool
) -> None:
    asked: list[str] = []

    def owner_alive(actor_id: str) -> bool | None:
        asked.append(actor_id)
        return alive

    async def scenario() -> None:
        owner = _manager(backend, storage)
        job = await owner.create("frost", {}, client_key=None, images=[("p.png", io.BytesIO(_images(1)[0]))], archive=None, shared={})
        owner.stop()
        lease = {"owner": "dead-router", "actor_id": "a1b2", "expires_at": time.time() + 60}  # far from expiring
        storage.write_text(f"{job['id']}/lease.json", json.dumps(lease))
        other = _manager(backend, storage)
        other.owner_alive = owner_alive
        await other._schedule_once()
        assert (job["id"] in other._jobs) is resumed and asked == ["a1b2"]
        if resumed:
            await _until(lambda: _status(storage, job["id"]) == "succeeded")
        other.stop()

    asyncio.run(scenario())


def test_a_lease_names_its_routers_actor(backend: FakeBackend, storage: Storage) -> None:
    async def scenario() -> dict[str, Any]:
        backend.gate = threading.Semaphore(0)
        manager = _manager(backend, storage)
        manager.actor_id = "feed"
        job = await manager.create("frost", {}, client_key=None, images=[("p.png", io.BytesIO(_images(1)[0]))], archive=None, shared={})
        await _until(lambda: storage.exists(f"{job['id']}/lease.json"))
        lease = json.loads(storage.read_text(f"{job['id']}/lease.json"))
        backend.gate.release(1)
        manager.stop()
        return lease

    assert asyncio.run(scenario())["actor_id"] == "feed"


def test_progress_never_goes_backwards_across_a_router_death(backend: FakeBackend, storage: Storage) -> None:
    """The first router dies (its tasks vanish, its lease stays); the second, told it is dead,
    resumes. Every GET on either side, and state.json throughout, only ever counts up."""
    images = _images(8)
    seen: list[int] = []  # what GET answered, from the owner, then from the next router
    written: list[int] = []  # what state.json said

    async def watch(manager: JobManager, job_id: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            seen.append((await manager.get(job_id, items=False))["done"])
            written.append(json.loads(storage.read_text(f"{job_id}/state.json"))["done"])
            await asyncio.sleep(0.005)

    async def scenario() -> None:
        first = _manager(backend, storage, max_in_flight_per_job=4)
        first.actor_id = "first"
        gate = backend.gate = threading.Semaphore(0)
        files = [(f"p{i}.png", io.BytesIO(d)) for i, d in enumerate(images)]
        job = await first.create("frost", {}, client_key=None, images=files, archive=None, shared={})
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(first, job["id"], stop))
        await _until(lambda: len(backend.calls) >= 4)
        gate.release(4)
        await _until(lambda: len(storage.listdir(f"{job['id']}/results")) >= 4)
        first._scheduler.cancel()  # dies: nothing released, nothing more written
        for running in first._jobs.values():
            running.task.cancel()
        stop.set()
        await watcher
        backend.gate = None
        gate.release(8)
        second = _manager(backend, storage)
        second.owner_alive = lambda actor_id: actor_id != "first"
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(second, job["id"], stop))
        started = time.monotonic()
        second.ensure_started()
        await _until(lambda: _status(storage, job["id"]) == "succeeded")
        assert time.monotonic() - started < second.config.lease_timeout_s  # did not wait out the lease
        stop.set()
        await watcher
        # The job can finish between the watcher's last look and the stop: one look after it.
        seen.append((await second.get(job["id"], items=False))["done"])
        second.stop()

    asyncio.run(scenario())
    assert seen == sorted(seen) and seen[-1] == 8, [(i, a, b) for i, (a, b) in enumerate(zip(seen, seen[1:])) if b < a]
    assert written == sorted(written)


@pytest.mark.parametrize(
    ("reply", "calls", "status", "code"),
    [
        (Overloaded("queue full", retry_after_s=0), 2, "ok", None),  # retryable: tried again, and it worked
        (ModelUnavailable("no replica", retry_after_s=0), 2, "ok", None),
        (InvalidImage("not a picture"), 1, "failed", "invalid_image"),  # not retryable: fails at once
    ],
    ids=["overloaded", "model_unavailable", "invalid_image"],
)
def test_an_item_is_retried_only_when_its_error_is_retryable(
    backend: FakeBackend, storage: Storage, reply: Exception, calls: int, status: str, code: str | None
) -> None:
    backend.replies = [reply]  # the first call's answer; then the pixels' own

    async def scenario() -> dict[str, Any]:
        manager = _manager(backend, storage)
        job = await manager.create("frost", {}, client_key=None, images=[("p.png", io.BytesIO(_images(1)[0]))], archive=None, shared={})
        await _until(lambda: _status(storage, job["id"]) in ("succeeded", "failed"))
        manager.stop()
        return json.loads(storage.read_text(f"{job['id']}/results/000000.json"))

    record = asyncio.run(scenario())
    assert len(backend.calls) == calls and record["status"] == status and (record["error"] or {}).get("code") == code


def test_an_item_gives_up_after_item_retries(backend: FakeBackend, storage: Storage) -> None:
    backend.reply = Overloaded("queue full", retry_after_s=0)

    async def scenario() -> dict[str, Any]:
        manager = _manager(backend, storage, item_retries=1)
        job = await manager.create("frost", {}, client_key=None, images=[("p.png", io.BytesIO(_images(1)[0]))], archive=None, shared={})
        await _until(lambda: _status(storage, job["id"]) == "failed")
        manager.stop()
        return json.loads(storage.read_text(f"{job['id']}/results/000000.json"))

    record = asyncio.run(scenario())
    assert len(backend.calls) == 2 and record["error"]["code"] == "overloaded"


def _status(storage: Storage, job_id: str) -> str:
    return json.loads(storage.read_text(f"{job_id}/state.json"))["status"]


async def _until(condition: Any, limit: int = 400) -> None:
    for _ in range(limit):  # bounded: 20 s at most
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


# -- long names, a full disk, deletion, permissions ------------------------------------------

LONG_NAMES = ["山" * 81 + ".png", "写真" * 50 + ".png", "🐱" * 70 + ".png", "写真" * 50 + "2.png"]  # 247 to 306 bytes


def _job_files(storage: Storage, job_id: str) -> list[Path]:
    return [p for p in Path(storage.path(job_id)).rglob("*") if p.is_file()]


def _wait_running(api: TestClient, job_id: str) -> None:
    for _ in range(400):  # bounded: 20 s at most
        if api.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never started")


def test_a_queued_job_waits_while_the_disk_is_full_then_runs(
    backend: FakeBackend, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[str, str]:
        manager = _manager(backend, storage)
        manager.ensure_started = lambda: None  # type: ignore[method-assign]  # the test ticks the scheduler itself
        images = [(f"p{i}.png", io.BytesIO(data)) for i, data in enumerate(_images(2))]
        job = await manager.create("frost", {}, client_key=None, images=images, archive=None, shared={})
        fill(monkeypatch)
        await manager._schedule_once()  # the lease cannot be written: nothing starts, nothing raises
        waiting = (await manager.get(job["id"]))["status"]
        monkeypatch.undo()
        await manager._schedule_once()
        running = manager._jobs[job["id"]].task
        assert running is not None
        await running
        return waiting, (await manager.get(job["id"]))["status"]

    assert asyncio.run(scenario()) == ("queued", "succeeded")


def test_long_file_names_of_any_script_run_like_the_others_and_keep_their_names(api: TestClient) -> None:
    images = _images(len(LONG_NAMES) + 1)
    files = [("images", (name, data, "image/png")) for name, data in zip([*LONG_NAMES, "short.png"], images)]
    job = _post(api, files).json()
    body = _wait(api, job["id"])
    assert body["status"] == "succeeded" and [i["status"] for i in body["items"]] == ["ok"] * 5, body["items"]
    assert [i["name"] for i in body["items"]] == [*LONG_NAMES, "short.png"]
    zf = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/result").content))
    manifest = [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]
    assert [m["input"] for m in manifest] == [*LONG_NAMES, "short.png"]
    outputs = [m["output"] for m in manifest]
    assert len(set(outputs)) == 5 and outputs[-1] == "short.png"
    assert all(len(o.encode()) <= 200 and o.startswith(n[:10]) for o, n in zip(outputs, LONG_NAMES))
    assert sorted(zf.namelist()) == sorted([*outputs, "manifest.jsonl", "failures.jsonl"])


def test_a_full_disk_fails_each_item_and_the_job_with_a_reason_and_leaves_no_partial_file(
    api: TestClient, backend: FakeBackend, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.gate = threading.Semaphore(0)
    job = _post(api, _image_files(_images(6))).json()
    _wait_running(api, job["id"])  # its lease is taken: the disk fills under a running job
    disk = fill(monkeypatch)
    backend.gate.release(6)
    body = _wait(api, job["id"])
    assert body["status"] == "failed" and body["error"]["code"] == "insufficient_storage", body
    assert {i["status"] for i in body["items"]} == {"failed"}, body["items"]
    assert {i["error"]["code"] for i in body["items"]} == {"insufficient_storage"}
    assert disk.refused and not [p for p in _job_files(storage, job["id"]) if p.name.endswith(".tmp")]
    assert not [p for p in _job_files(storage, job["id"]) if "outputs" in p.parts]
    r = api.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    assert not [p for p in _job_files(storage, job["id"]) if p.name.endswith(".tmp")]


def test_a_result_zip_that_does_not_fit_is_507_and_is_built_once_there_is_room(
    api: TestClient, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _post(api, _image_files(_images(3))).json()
    _wait(api, job["id"])
    fill(monkeypatch, budget=200)
    r = api.get(f"/v1/jobs/{job['id']}/result")
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    assert not [p for p in _job_files(storage, job["id"]) if "result.zip" in p.name]
    monkeypatch.undo()
    assert api.get(f"/v1/jobs/{job['id']}/result").status_code == 200


def test_a_new_job_on_a_full_disk_is_507_and_leaves_nothing(api: TestClient, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(monkeypatch, budget=1000)
    r = _post(api, _image_files(_images(3)))
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage", r.text
    assert storage.listdir() == []


def test_delete_of_an_ended_job_removes_all_its_files(api: TestClient, storage: Storage) -> None:
    job = _post(api, _image_files(_images(3))).json()
    _wait(api, job["id"])
    assert api.get(f"/v1/jobs/{job['id']}/result").status_code == 200
    assert _job_files(storage, job["id"])
    r = api.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["status"] == "succeeded"
    assert storage.listdir() == []
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_job_files_are_private_wherever_the_storage_is(api: TestClient, storage: Storage) -> None:
    job = _post(api, _image_files(_images(2))).json()
    _wait(api, job["id"])
    assert api.get(f"/v1/jobs/{job['id']}/result").status_code == 200
    root = Path(storage.path(""))
    modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
    assert {m for p, m in modes.items() if (root / p).is_dir()} == {0o700}, modes
    assert {m for p, m in modes.items() if (root / p).is_file()} == {0o600}, modes
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_running_job_can_be_canceled_while_the_disk_is_full(
    api: TestClient, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.gate = threading.Semaphore(0)
    job = _post(api, _image_files(_images(3))).json()
    _wait_running(api, job["id"])
    fill(monkeypatch)
    r = api.delete(f"/v1/jobs/{job['id']}")
    backend.gate.release(3)
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_a_disk_too_full_for_outputs_lists_every_item_and_why_in_the_result_zip(
    api: TestClient, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.gate = threading.Semaphore(0)
    job = _post(api, _image_files(_images(6))).json()
    _wait_running(api, job["id"])
    fill(monkeypatch, only=lambda path: "/outputs/" in path)  # records and the zip still fit, no image does
    backend.gate.release(6)
    assert _wait(api, job["id"])["status"] == "failed"
    zf = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/result").content))
    failures = [json.loads(line) for line in zf.read("failures.jsonl").decode().splitlines()]
    assert sorted(f["input"] for f in failures) == [f"photo{i}.png" for i in range(6)]
    assert {f["error"]["code"] for f in failures} == {"insufficient_storage"}
