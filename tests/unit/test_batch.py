"""The batch CLI's pure parts: inputs, output names, manifest and resume, retries, atomic writes.
The service is an in-process ``httpx.MockTransport``; no Ray, no sockets."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from stylefleet.manifest import ManifestIndex, Record, output_names, parse_lines
from stylefleet.storage import Storage
from stylefleet.tools.batch import run as batch
from stylefleet.tools.batch.http import RetryPolicy, StyleClient
from stylefleet.tools.batch.inputs import InputError, find_inputs
from tests import samples
from tests.unit.batch_cli import run_batch
from tests.unit.full_disk import fill


def _tree(root: Path, names: list[str], data: bytes = b"x") -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_a_folder_is_walked_recursively_skipping_hidden_non_images_and_the_output(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.jpg", "sub/b.PNG", "sub/deep/c.webp", "notes.txt", ".hidden.png", ".git/d.png", "out/e.png"])
    items = find_inputs(str(tmp_path), exclude=str(tmp_path / "out"))
    assert [i.rel for i in items] == ["a.jpg", "sub/b.PNG", "sub/deep/c.webp"]


def test_a_list_file_names_files_relative_to_itself(tmp_path: Path) -> None:
    _tree(tmp_path, ["photos/x/a.jpg", "photos/y/b.jpg"])
    (tmp_path / "list.txt").write_text("# my picks\nphotos/x/a.jpg\n\n" + str(tmp_path / "photos/y/b.jpg") + "\n")
    items = find_inputs(str(tmp_path / "list.txt"))
    assert [i.rel for i in items] == ["x/a.jpg", "y/b.jpg"]


def test_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images"):
        find_inputs(str(tmp_path))


def test_output_names_mirror_the_tree_and_never_collide() -> None:
    names = output_names(["a.jpg", "a.png", "sub/b.tiff", "c"], "png")
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "sub/b.tiff": "sub/b.png", "c": "c.png"}
    assert output_names(["x.png"], "jpeg") == {"x.png": "x.jpg"}


@pytest.mark.parametrize(
    "inputs",
    [
        ["x.jpg", "x.png", "x.jpg.png"],
        ["x.jpg.png", "x.png", "x.jpg"],
        ["X.jpg", "x.png", "x.JPG.png", "x.jpg-2.png"],
        ["a/b.jpg", "a/b.webp", "a/b.jpg.png", "a/b.jpg-2.png", "a/b.jpg-2.jpeg"],
    ],
    ids=["collider-beside-its-fallback", "fallback-first", "case-only", "counter-taken"],
)
def test_output_names_are_unique_by_construction(inputs: list[str]) -> None:
    names = output_names(inputs, "png")
    assert list(names) == inputs
    assert len({n.lower() for n in names.values()}) == len(inputs), names
    assert output_names(list(inputs), "png") == names  # a resumed run finds the same names


def _record(rel: str, status: str = "ok", code: str | None = None, **kw: object) -> Record:
    return Record(input=rel, input_sha256="s", style="frost", params={"format": "png"}, status=status,  # type: ignore[arg-type]
                  output=f"{rel}.png" if status == "ok" else None, error={"code": code, "message": ""} if code else None, **kw)


@pytest.mark.parametrize(
    ("record", "done"),
    [(_record("a"), True), (_record("a", "failed", "invalid_image"), True), (_record("a", "failed", "overloaded"), False),
     (_record("a", "failed", "connection_error"), False)],
    ids=["ok", "input-error", "overloaded", "connection"],
)
def test_an_item_is_done_after_success_or_an_input_error_not_after_a_service_error(record: Record, done: bool) -> None:
    assert (ManifestIndex([record]).done(record.key) is not None) is done


def test_the_last_record_wins_and_a_torn_last_line_is_ignored() -> None:
    lines = [_record("a", "failed", "overloaded").to_json(), _record("a").to_json(), '{"input": "b", "inp']
    index = ManifestIndex(parse_lines(lines))
    assert len(index.latest) == 1 and next(iter(index.latest.values())).status == "ok"


def test_an_ok_record_whose_output_vanished_is_not_done(tmp_path: Path) -> None:
    out = Storage(str(tmp_path))
    record = _record("a")
    assert ManifestIndex([record]).done(record.key, out) is None
    out.write_bytes("a.png", b"img")
    assert ManifestIndex([record]).done(record.key, out) is not None


def test_an_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = Storage(str(tmp_path))

    def boom(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        out.write_bytes("sub/a.png", b"half")
    assert list((tmp_path / "sub").iterdir()) == []


def test_object_store_uris_work_through_the_same_seam() -> None:
    store = Storage("memory://stylefleet-test/out")
    store.write_bytes("x/a.png", b"1")
    store.append_line("m.jsonl", "one")
    store.append_line("m.jsonl", "two")
    assert store.read_bytes("x/a.png") == b"1" and store.read_text("m.jsonl") == "one\ntwo\n"
    assert list(store.walk_files()) == ["m.jsonl", "x/a.png"]


# -- retries -------------------------------------------------------------------------------------


class Service:
    """A scripted /v1/styles/frost: pops one answer per request (then answers 200)."""

    def __init__(self, script: list[object] | None = None, retry_after: str = "0") -> None:
        self.script = list(script or [])
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/styles":
            return httpx.Response(
                200, json={"styles": [{"name": "frost", "inputs": ["image"], "params": [{"name": "strength"}, {"name": "format"}]}]}
            )
        body = request.read()
        if b"CORRUPT" in body:
            return httpx.Response(400, json={"error": {"code": "invalid_image", "message": "not an image"}})
        answer = self.script.pop(0) if self.script else 200
        if answer == 422:
            return httpx.Response(422, json={"error": {"code": "invalid_params", "message": "strength: too big"}})
        if isinstance(answer, Exception):
            raise answer
        if answer == 200:
            return httpx.Response(
                200, content=b"OUT:" + body[-40:], headers={"x-stylefleet-variant": "default", "x-stylefleet-model-sha256": "m"}
            )
        return httpx.Response(
            int(answer), json={"error": {"code": "overloaded", "message": "busy"}}, headers={"retry-after": self.retry_after}
        )  # type: ignore[arg-type]


def _client(service: Service, sleeps: list[float], retries: int = 3) -> StyleClient:
    async def sleep(s: float) -> None:
        sleeps.append(s)

    http = httpx.AsyncClient(transport=httpx.MockTransport(service), base_url="http://svc")
    return StyleClient(http, "frost", {"format": "png"}, policy=RetryPolicy(retries=retries), sleep=sleep, rng=random.Random(1))


def test_503_is_retried_after_the_servers_retry_after() -> None:
    service, sleeps = Service([503, 429], retry_after="7"), []
    outcome = asyncio.run(_client(service, sleeps).apply("a.png", b"img"))
    assert outcome.ok and outcome.attempts == 3
    assert [round(s) for s in sleeps] == [7, 7]


def test_connection_errors_are_retried_with_backoff() -> None:
    service, sleeps = Service([httpx.ConnectError("refused"), httpx.ConnectError("refused")]), []
    outcome = asyncio.run(_client(service, sleeps).apply("a.png", b"img"))
    assert outcome.ok and len(service.requests) == 3
    assert 0 < sleeps[0] <= 0.5 and 0 < sleeps[1] <= 1.0


def test_input_errors_are_not_retried() -> None:
    service, sleeps = Service(), []
    outcome = asyncio.run(_client(service, sleeps).apply("a.png", b"CORRUPT"))
    assert not outcome.ok and outcome.error_code == "invalid_image" and len(service.requests) == 1 and sleeps == []


def test_retries_give_up_with_the_servers_code() -> None:
    service, sleeps = Service([503] * 10), []
    outcome = asyncio.run(_client(service, sleeps, retries=2).apply("a.png", b"img"))
    assert (outcome.ok, outcome.error_code, outcome.attempts) == (False, "overloaded", 3)


def _answers(*responses: httpx.Response) -> tuple[StyleClient, list[float], list[httpx.Request]]:
    """A client over a service that gives these answers in turn (then 200)."""
    queue, seen, sleeps = list(responses), [], []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if queue else httpx.Response(200, content=b"OUT")

    async def sleep(s: float) -> None:
        sleeps.append(s)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://svc")
    return StyleClient(http, "frost", {}, policy=RetryPolicy(retries=3), sleep=sleep, rng=random.Random(1)), sleeps, seen


def test_a_proxys_502_page_is_retried_by_its_status() -> None:
    client, sleeps, seen = _answers(httpx.Response(502, text="<html>Bad Gateway</html>"))
    outcome = asyncio.run(client.apply("a.png", b"img"))
    assert outcome.ok and len(seen) == 2 and len(sleeps) == 1


def test_a_500_internal_error_is_not_retried() -> None:
    client, sleeps, seen = _answers(httpx.Response(500, json={"error": {"code": "internal_error", "message": "the model failed"}}))
    outcome = asyncio.run(client.apply("a.png", b"img"))
    assert (outcome.ok, outcome.error_code, outcome.attempts) == (False, "internal_error", 1) and sleeps == []


def test_a_retryable_code_is_retried_whatever_its_status() -> None:
    """request_timeout (408) is retryable by its class, though 408 is no retry status of its own."""
    client, sleeps, seen = _answers(httpx.Response(408, json={"error": {"code": "request_timeout", "message": "slow body"}}))
    outcome = asyncio.run(client.apply("a.png", b"img"))
    assert outcome.ok and outcome.attempts == 2


# -- the whole command against the mock service ------------------------------------------------


def _run(tmp_path: Path, service: Service, *extra: str) -> int:
    return run_batch(service, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--style", "frost", *extra)


def _inputs(tmp_path: Path, n: int, corrupt: int = 0) -> None:
    for i in range(n):
        data = b"CORRUPT" if i < corrupt else samples.encoded(samples.cat()[: 40 + i, :50])
        _tree(tmp_path / "in", [f"d{i % 3}/img{i:02d}.png"], data)


def _manifest(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]


def test_failures_are_isolated_listed_and_give_exit_1(tmp_path: Path) -> None:
    _inputs(tmp_path, 9, corrupt=2)
    assert _run(tmp_path, Service()) == 1
    records = _manifest(tmp_path)
    assert len(records) == 9 and sum(r["status"] == "ok" for r in records) == 7
    assert len(list((tmp_path / "out").rglob("img*.png"))) == 7
    failures = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(f)["error"]["code"] for f in failures) == ["invalid_image"] * 2
    ok = next(r for r in records if r["status"] == "ok")
    assert set(ok) >= {"input", "input_sha256", "style", "params", "variant", "seed", "output", "status", "error", "model_sha256"}
    assert ok["output"] == ok["input"] and ok["model_sha256"] == "m"


def test_a_rerun_redoes_nothing_and_force_redoes_all(tmp_path: Path) -> None:
    _inputs(tmp_path, 5)
    assert _run(tmp_path, Service()) == 0
    service = Service()
    assert _run(tmp_path, service) == 0
    assert [r.url.path for r in service.requests] == ["/v1/styles"] and len(_manifest(tmp_path)) == 5
    assert _run(tmp_path, Service(), "--force") == 0 and len(_manifest(tmp_path)) == 10


def test_a_rerun_retries_what_the_service_failed_and_changed_params_redo(tmp_path: Path) -> None:
    _inputs(tmp_path, 3)
    assert _run(tmp_path, Service([503] * 6), "--retries", "1") == 1  # every item gives up after 2 tries
    assert {r["error"]["code"] for r in _manifest(tmp_path)} == {"overloaded"}
    second = Service()
    assert _run(tmp_path, second) == 0 and len(second.requests) == 1 + 3
    third = Service()
    assert _run(tmp_path, third, "--param", "strength=0.5") == 0 and len(third.requests) == 1 + 3


def test_unknown_style_or_param_is_a_usage_error(tmp_path: Path) -> None:
    _inputs(tmp_path, 1)
    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    assert _run(tmp_path, Service(), "--param", "nope=1") == 2
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_param_the_service_refuses_stops_the_run_with_exit_2_and_records_nothing(tmp_path: Path) -> None:
    _inputs(tmp_path, 4)
    assert _run(tmp_path, Service([422] * 4), "--param", "strength=9", "--concurrency", "1") == 2
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_folder_whose_names_collide_keeps_every_result(tmp_path: Path) -> None:
    images = [samples.encoded(samples.cat()[: 40 + i, :50]) for i in range(3)]
    for name, data in zip(["x.jpg", "x.png", "x.jpg.png"], images):
        _tree(tmp_path / "in", [name], data)
    assert _run(tmp_path, Service()) == 0
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png")
    assert len(outputs) == 3 and len({r["output"] for r in _manifest(tmp_path)}) == 3


# -- a full output folder ----------------------------------------------------------------------


def _is_image(path: str) -> bool:
    return ".png." in path or path.endswith(".png")


def test_a_full_output_folder_stops_the_run_with_exit_3_a_summary_and_failures_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _inputs(tmp_path, 6)
    fill(monkeypatch, budget=0, only=_is_image)  # room for the small manifest lines, none for an image
    assert _run(tmp_path, Service(), "--concurrency", "1") == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "items done" in err and "output storage is full" in err
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["error"]["code"] for f in failures] == ["insufficient_storage"]  # the run stopped at the first
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and _is_image(p.name)]
    monkeypatch.undo()
    assert _run(tmp_path, Service()) == 0  # a re-run, once there is room, does what was not done
    assert len(list((tmp_path / "out").rglob("img*.png"))) == 6


def test_an_output_folder_too_full_even_for_failures_jsonl_says_so_and_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _inputs(tmp_path, 3)
    fill(monkeypatch, budget=0)
    assert _run(tmp_path, Service()) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failures.jsonl not written" in err and "items done" in err


@pytest.mark.parametrize("name", ["山" * 81 + ".png", "🐱" * 62 + ".png"], ids=["cjk-247-bytes", "emoji-252-bytes"])
def test_a_long_input_name_is_written_under_a_bounded_name(tmp_path: Path, name: str) -> None:
    _inputs(tmp_path, 2)
    (tmp_path / "in" / name).write_bytes(samples.encoded(samples.cat()[:60, :60]))  # the disk takes the input's name...
    assert _run(tmp_path, Service()) == 0  # ... and the output's, with its temporary file's
    mine = next(r for r in _manifest(tmp_path) if r["input"] == name)
    assert mine["status"] == "ok" and len(mine["output"].encode()) <= 200 and (tmp_path / "out" / mine["output"]).exists()
