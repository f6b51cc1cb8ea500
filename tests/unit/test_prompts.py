"""Prompt lists: parsing, fixed seeds, and ``stylefleet batch`` over a text-to-image style.
The service is an in-process ``httpx.MockTransport``; no Ray, no sockets."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from stylefleet.prompts import output_name, parse_prompts
from tests.unit.batch_cli import run_batch

DEFAULTS = {"prompt": "a mug", "seed": 1234, "steps": 25, "negative_prompt": "blurry"}
ALLOWED = {"prompt", "seed", "steps"}


def _parse(text: str, name: str = "p.txt", run_fields: dict[str, str] | None = None, allowed: set[str] = ALLOWED):
    return parse_prompts(text, name, run_fields=run_fields or {}, defaults=DEFAULTS, allowed=allowed)


def test_one_prompt_per_line_blank_lines_skipped() -> None:
    items = _parse("a red kettle\n\n  a blue lamp  \n")
    assert [(i.name, i.prompt) for i in items] == [("p.txt:1", "a red kettle"), ("p.txt:3", "a blue lamp")]


def test_seeds_are_the_job_seed_plus_the_index_unless_the_line_gives_one() -> None:
    items = _parse('{"prompt": "a"}\n{"prompt": "b", "seed": 5}\n{"prompt": "c"}\n', "p.jsonl")
    assert [i.fields["seed"] for i in items] == ["1234", "5", "1236"]


def test_the_runs_seed_is_the_job_seed() -> None:
    assert [i.fields["seed"] for i in _parse("a\nb\n", run_fields={"seed": "100"})] == ["100", "101"]


def test_seeds_wrap_at_2_to_the_32() -> None:
    assert [i.fields["seed"] for i in _parse("a\nb\n", run_fields={"seed": str(2**32 - 1)})] == [str(2**32 - 1), "0"]


def test_steps_are_recorded_from_the_styles_default_unless_the_run_sets_them() -> None:
    assert _parse("a\n")[0].fields == {"prompt": "a", "steps": "25", "seed": "1234"}
    assert "steps" not in _parse("a\n", run_fields={"steps": "10"})[0].fields


def test_negative_prompt_only_where_the_preset_leaves_it_open() -> None:
    closed = _parse('{"prompt": "a", "negative_prompt": "fog"}\n', "p.jsonl")
    assert closed[0].error and "negative_prompt" in closed[0].error
    opened = _parse('{"prompt": "a", "negative_prompt": "fog"}\n{"prompt": "b"}\n', "p.jsonl", allowed=ALLOWED | {"negative_prompt"})
    assert [i.fields["negative_prompt"] for i in opened] == ["fog", "blurry"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("not json", "not JSON"),
        ('["a"]', "object"),
        ('{"prompt": "a", "n": 3}', "n: not a param"),
        ('{"prompt": {"x": 1}}', "plain values"),
    ],
)
def test_a_bad_line_fails_alone(line: str, needle: str) -> None:
    items = _parse(f'{{"prompt": "fine"}}\n{line}\n{{"prompt": "also fine"}}\n', "p.jsonl")
    assert [bool(i.error) for i in items] == [False, True, False]
    assert needle in (items[1].error or "") and items[1].error.startswith("line 2:")  # type: ignore[union-attr]
    assert items[2].fields["seed"] == "1236"  # a bad line keeps its index: later seeds do not move


def test_output_names_are_numbered_and_readable() -> None:
    assert output_name(6, 12, "A red bicycle, on grass!", ".png") == "0007-a-red-bicycle-on-grass.png"
    assert output_name(0, 12345, "", ".jpg") == "00001-image.jpg"


# -- the batch command on a text-to-image style ----------------------------------------------------


class TextService:
    """A scripted /v1/styles/product-shot: the image is the form it got; 'boom' is refused, 'nsfw' flagged."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/styles":
            params = [{"name": k, "default": v} for k, v in DEFAULTS.items() if k != "negative_prompt"]
            return httpx.Response(
                200, json={"styles": [{"name": "product-shot", "inputs": [], "params": params + [{"name": "n"}, {"name": "format"}]}]}
            )
        form = {k: v[0] for k, v in parse_qs(request.read().decode()).items()}
        if "boom" in form.get("prompt", ""):
            return httpx.Response(422, json={"error": {"code": "invalid_params", "message": "steps: too many"}})
        headers = {
            "x-stylefleet-seed": form["seed"],
            "x-stylefleet-model-sha256": "m",
            "x-stylefleet-nsfw": str("nsfw" in form["prompt"]).lower(),
        }
        return httpx.Response(200, content=json.dumps(form, sort_keys=True).encode(), headers=headers)


def _run(tmp_path: Path, service: TextService, prompts: str, name: str = "prompts.txt", *extra: str) -> int:
    (tmp_path / name).write_text(prompts)
    return run_batch(service, str(tmp_path / name), "-o", str(tmp_path / "out"), "--style", "product-shot", *extra)


def _manifest(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]


def test_a_prompt_list_gives_one_image_per_line_with_its_params_recorded(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), "a red kettle\na blue lamp\n") == 0
    records = sorted(_manifest(tmp_path), key=lambda r: r["input"])
    assert [r["output"] for r in records] == ["0001-a-red-kettle.png", "0002-a-blue-lamp.png"]
    first = records[0]
    assert (first["input"], first["seed"], first["model_sha256"], first["nsfw"]) == ("prompts.txt:1", "1234", "m", False)
    assert first["params"] == {"format": "png", "prompt": "a red kettle", "seed": "1234", "steps": "25"}
    sent = json.loads((tmp_path / "out" / "0002-a-blue-lamp.png").read_bytes())
    assert sent == {"format": "png", "prompt": "a blue lamp", "seed": "1235", "steps": "25"}  # what a re-run of the line sends


def test_a_rerun_skips_finished_lines_and_sends_the_same_seeds(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), "a\nb\n") == 0
    again = TextService()
    assert _run(tmp_path, again, "a\nb\nc\n") == 0
    assert [r.url.path for r in again.requests] == ["/v1/styles", "/v1/styles/product-shot"]  # only c
    assert parse_qs(again.requests[1].read().decode())["seed"] == ["1236"]


def test_an_edited_line_runs_again(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), "a\nb\n") == 0
    again = TextService()
    assert _run(tmp_path, again, "a\nb2\n") == 0
    assert len(again.requests) == 2


def test_a_refused_or_unreadable_line_fails_alone(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), '{"prompt": "a"}\n{"prompt": "boom"}\nnot json\n{"prompt": "d"}\n', "p.jsonl") == 1
    by_input = {r["input"]: r for r in _manifest(tmp_path)}
    assert {k: r["status"] for k, r in by_input.items()} == {
        "p.jsonl:1": "ok",
        "p.jsonl:2": "failed",
        "p.jsonl:3": "failed",
        "p.jsonl:4": "ok",
    }
    assert (by_input["p.jsonl:2"]["error"]["code"], by_input["p.jsonl:3"]["error"]["code"]) == ("invalid_params", "invalid_prompt_line")


def test_a_flagged_image_is_marked_in_the_manifest(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), "a cat\nnsfw thing\n") == 0
    assert {r["input"]: r["nsfw"] for r in _manifest(tmp_path)} == {"prompts.txt:1": False, "prompts.txt:2": True}


def test_an_empty_prompt_list_is_a_usage_error(tmp_path: Path) -> None:
    assert _run(tmp_path, TextService(), "\n\n") == 2
