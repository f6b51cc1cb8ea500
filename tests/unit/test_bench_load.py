"""What ``stylefleet bench`` counts as the served rate at saturation, and that a level's figures
are taken with no profiler running. Arithmetic and ordering only: no Ray, no timing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from stylefleet.bench import bare, common, levels, served
from stylefleet.bench.load import Case, in_turns, steady_rate
from stylefleet.spec import AppSpec
from tests.samples import ROOT


def test_steady_rate_leaves_out_the_drain_that_the_whole_run_counts() -> None:
    # 3 completions a second while 16 clients are busy, then a slow drain of the last 15.
    done_at = [i / 3 for i in range(1, 50)] + [17.0 + i for i in range(15)]
    whole_run = len(done_at) / max(done_at)
    assert whole_run < 2.2
    assert steady_rate(done_at, 16) == pytest.approx(3.0)


def test_results_arriving_a_batch_at_a_time_give_the_batch_rate() -> None:
    # Batches of 4 finishing once a second, their 4 results a few ms apart: 4 a second.
    done_at = [k + 0.005 * i for k in range(1, 17) for i in range(4)]
    assert steady_rate(done_at, 16) == pytest.approx(4.0, rel=0.05)


def test_no_steady_rate_from_a_run_shorter_than_three_rounds() -> None:
    assert steady_rate([float(i) for i in range(1, 32)], 16) is None
    assert steady_rate([1.0, 1.0, 1.0], 1) is None  # no time between the window's ends
    assert steady_rate([], 0) is None


def test_saturated_ips_prefers_the_steady_window_and_falls_back_to_the_whole_run() -> None:
    assert levels.saturated_ips({"ips": 2.5, "steady_ips": 3.0}) == 3.0
    assert levels.saturated_ips({"ips": 2.5, "steady_ips": None}) == 2.5


def test_a_busy_level_sends_six_rounds_so_its_steady_window_has_four() -> None:
    assert levels.level_requests(48, 16) == 96
    assert levels.level_requests(200, 16) == 200
    assert levels.level_requests(12, 1) == 12


def test_the_profiler_never_runs_while_a_levels_figures_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    info = {"pid": 1, "compute_seconds": 0.0, "batch_sizes": {"4": 1}, "rss_bytes": 1 << 20}

    class FakeProfiler:
        def __init__(self, pid: int, seconds: float) -> None:
            events.append("profiler started")

        def result(self) -> dict[str, Any]:
            events.append("profiler done")
            return {"pid": 1, "shares": {}}

    class FakeUsage:
        def __init__(self, pids: list[int]) -> None:
            pass

        def start(self) -> None:
            events.append("usage started")

        def stop(self) -> dict[str, Any]:
            events.append("usage stopped")
            return {}

    async def fake_level(url: str, case: Any, samples: Any, concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
        events.append(f"load {total}")
        return {"concurrency": concurrency, "requests": total, "errors": 0, "ips": 1.0, "p50_ms": 1.0, "p95_ms": 1.0}

    monkeypatch.setattr(levels, "Profiler", FakeProfiler)
    monkeypatch.setattr(levels, "Usage", FakeUsage)
    monkeypatch.setattr(levels, "served_level", fake_level)
    monkeypatch.setattr(levels, "replica_infos", lambda deployment: [dict(info)])
    monkeypatch.setattr(levels, "mean_batch", lambda before, after: 4.0)
    monkeypatch.setattr(levels, "rss_of", lambda infos: [])

    case = Case("cutout", "remove-background", {}, ("image",))
    row = levels.measured_level("http://127.0.0.1:1", case, {}, 16, 96, 60.0, profile_s=5.0)

    measured = events.index("usage stopped")
    assert events[: measured + 1] == ["usage started", "load 96", "usage stopped"]
    assert events[measured + 1] == "profiler started"
    assert events[-1] == "profiler done" and "profile" in row


def test_the_http_path_is_the_median_over_http_less_the_median_to_the_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.serve

    clock = [0.0]
    sent: list[Any] = []

    class FakeClient:
        def __init__(self, base_url: str, timeout: float) -> None:
            pass

        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def post(self, path: str, files: Any, data: Any) -> Any:
            clock[0] += 0.020 if len(sent) % 4 else 0.030  # 30 and 20 ms by turns: median 25
            sent.append(path)
            return type("Answer", (), {"status_code": 200, "text": ""})()

    class FakeHandle:
        def remote(self, request: Any) -> Any:
            sent.append(request)
            clock[0] += 0.010
            return type("Response", (), {"result": lambda self: None})()

    monkeypatch.setattr(levels.httpx, "Client", FakeClient)
    monkeypatch.setattr(levels.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ray.serve, "get_deployment_handle", lambda deployment, app: FakeHandle())
    case = Case("cutout", "remove-background", {}, ("image",))

    split = levels.http_path("http://127.0.0.1:1", case, {"image": b"jpeg"}, pairs=4)

    assert split == {"http_p50_ms": 25.0, "handle_p50_ms": 10.0, "http_path_ms": 15.0}
    assert sent[0] == "/v1/styles/cutout" and sent[1].files == {"image": b"jpeg"}  # alternating, same bytes


def test_a_concurrency_1_level_splits_the_http_path_at_full_size_and_on_small_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from stylefleet.imageio import decode, encode

    photo = encode(np.full((300, 200, 3), 90, np.uint8), "jpeg", 95)
    splits: list[tuple[dict[str, bytes], int]] = []

    def fake_http_path(url: str, case: Any, samples: dict[str, bytes], pairs: int = 20) -> dict[str, Any]:
        splits.append((samples, pairs))
        return {"http_path_ms": 30.0 if len(splits) == 1 else 4.0}

    async def fake_level(url: str, case: Any, samples: Any, concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
        return {"concurrency": concurrency, "requests": total, "errors": 0, "ips": 1.0, "p50_ms": 1.0, "p95_ms": 1.0}

    class FakeUsage:
        def __init__(self, pids: list[int]) -> None:
            pass

        def start(self) -> None:
            pass

        def stop(self) -> dict[str, Any]:
            return {}

    monkeypatch.setattr(levels, "http_path", fake_http_path)
    monkeypatch.setattr(levels, "Usage", FakeUsage)
    monkeypatch.setattr(levels, "served_level", fake_level)
    monkeypatch.setattr(levels, "replica_infos", lambda deployment: [{"pid": 1, "compute_seconds": 0.0}])
    monkeypatch.setattr(levels, "mean_batch", lambda before, after: 1.0)
    monkeypatch.setattr(levels, "rss_of", lambda infos: [])
    case = Case("ink", "restyle", {}, ("image", "style_image"))

    row = levels.measured_level("http://127.0.0.1:1", case, {"image": photo, "style_image": photo}, 1, 12, 60.0)

    assert row["http_path_ms"] == 30.0 and row["small_http_path_ms"] == 4.0
    (full, _), (small, pairs) = splits
    assert full == {"image": photo, "style_image": photo}
    assert pairs == levels.SMALL_PAIRS and set(small) == {"image", "style_image"}
    shapes = {decode(data, max_pixels=10**8).pixels.shape for data in small.values()}
    assert shapes == {(levels.SMALL_SIDE, round(200 * levels.SMALL_SIDE / 300), 3)}
    medians = {"http_p50_ms": 1, "handle_p50_ms": 1, "small_http_p50_ms": 1, "small_handle_p50_ms": 1}
    assert "at 64 px 4.0 ms" in levels.http_path_text(row | medians)


def test_in_turns_divides_each_served_rate_by_the_bare_rates_either_side_of_it() -> None:
    # The host slows by 5% a measurement; the server always does 0.8 of bare at that moment.
    speed = iter(1.0 - 0.05 * i for i in range(20))
    bare = lambda: 10.0 * next(speed)  # noqa: E731
    served = lambda: 0.8 * 10.0 * next(speed)  # noqa: E731
    result = in_turns(bare, served, rounds=3)
    assert result["served_over_bare_fastest"] == pytest.approx(0.8)
    assert len(result["bare_ips"]) == 4 and len(result["served_ips"]) == 3
    # Against the first bare rate alone, as a sweep minutes earlier would give, it reads 0.6.
    assert result["served_ips"][-1] / result["bare_ips"][0] == pytest.approx(0.6)


def test_in_turns_takes_the_median_round_so_one_outlier_does_not_move_it() -> None:
    served = iter([5.0, 9.0, 5.0])
    assert in_turns(lambda: 10.0, lambda: next(served), rounds=3)["served_over_bare_fastest"] == 0.5


def test_in_turns_refuses_zero_rounds() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        in_turns(lambda: 1.0, lambda: 1.0, rounds=0)


@pytest.mark.parametrize(("setup", "images_per_call"), [("one_call_all_threads", 2), (bare.PARALLEL, 2 * 2)])
def test_a_bare_probe_runs_the_shipped_network_at_the_sweeps_setup(setup: str, images_per_call: int, monkeypatch) -> None:
    monkeypatch.setattr("stylefleet.deployments.onnx_session.available_cores", lambda: 2)
    spec = AppSpec.from_application(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0])
    case = next(c for c in common.style_cases(spec) if c.deployment == "remove-background")
    probe = bare.BareProbe(case, spec.model_spec(case.deployment), common.sample_photos(), setup, 2, threads=None, warmup_s=0.0)
    try:
        assert probe.images_per_call == images_per_call  # a parallel call is one batch per core
        assert probe.rate(seconds=0.0) > 0
    finally:
        probe.close()


class _FakeProbe:
    def __init__(self, setup: str, batch_size: int, ips: float) -> None:
        self.setup, self.batch_size, self.ips, self.closed = setup, batch_size, ips, False

    def rate(self) -> float:
        return self.ips

    def close(self) -> None:
        self.closed = True


def _turns_args() -> Any:
    import argparse

    return argparse.Namespace(turns=2, requests=8, seconds=1.0)


_CASE: Any = SimpleNamespace(deployment="stylize")


def test_a_bare_turn_is_the_fastest_contender_so_a_noisy_sweep_pick_cannot_flatter_the_ratio(monkeypatch) -> None:
    # The sweep ranked the spinning call first by noise; timed again, the parallel calls are faster.
    built: list[_FakeProbe] = []

    def build(setup: str, batch: int) -> _FakeProbe:
        built.append(_FakeProbe(setup, batch, {"one_call_all_threads_spinning": 6.0, bare.PARALLEL: 8.0}[setup]))
        return built[-1]

    async def served_level(*_: Any) -> dict[str, Any]:
        return {"steady_ips": 7.2}

    monkeypatch.setattr(served, "served_level", served_level)
    monkeypatch.setattr(served, "saturated_ips", lambda row: row["steady_ips"])
    contenders = [(9.0, "one_call_all_threads_spinning", 1), (8.5, bare.PARALLEL, 4)]
    result = served.served_in_turns("http://127.0.0.1:1", _CASE, {}, build, contenders, 16, _turns_args())
    assert result["bare_ips"] == [8.0, 8.0, 8.0]
    assert result["served_over_bare_fastest"] == 0.9  # 7.2 / 8.0, not 7.2 / 6.0 = 1.2
    assert result["bare_winners"] == [f"{bare.PARALLEL}, batch 4"] * 3
    assert all(p.closed for p in built) and len(built) == 2


def test_bare_probes_are_closed_when_a_served_turn_fails(monkeypatch) -> None:
    built: list[_FakeProbe] = []

    def build(setup: str, batch: int) -> _FakeProbe:
        built.append(_FakeProbe(setup, batch, 5.0))
        return built[-1]

    async def served_level(*_: Any) -> dict[str, Any]:
        raise ConnectionError("service gone")

    monkeypatch.setattr(served, "served_level", served_level)
    with pytest.raises(ConnectionError):
        contenders = [(5.0, bare.PARALLEL, 1), (4.0, bare.PARALLEL, 2)]
        served.served_in_turns("http://127.0.0.1:1", _CASE, {}, build, contenders, 16, _turns_args())
    assert [p.closed for p in built] == [True, True]  # their sessions' memory goes back at once


def test_bare_turns_always_time_the_replicas_own_setup_even_when_the_sweep_ranked_it_low() -> None:
    ranked = [(6.8, bare.PARALLEL, 8), (6.6, "one_call_all_threads", 1), (6.4, bare.PARALLEL, 4), (6.3, bare.PARALLEL, 1)]
    assert bare.bare_contenders(ranked, served_batch=4) == [ranked[0], ranked[1], ranked[2]]
    assert bare.bare_contenders(ranked, served_batch=8) == ranked[:2]  # already among the leaders
    assert bare.bare_contenders(ranked, served_batch=16) == ranked[:2]  # not swept: nothing to add


def test_balanced_order_reverses_every_other_pass_so_each_item_has_the_same_mean_position() -> None:
    from stylefleet.bench.load import balanced_order

    order = balanced_order(3, 2)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    positions = {i: [p for p, (_, item) in enumerate(order) if item == i] for i in range(3)}
    assert {sum(p) / len(p) for p in positions.values()} == {2.5}
    assert balanced_order(2, 1) == [(0, 0), (0, 1)]
    with pytest.raises(ValueError):
        balanced_order(3, 0)


def test_median_of_rounds_skips_a_round_without_the_figure() -> None:
    from stylefleet.bench.load import median_of_rounds

    rows = [{"ips": 3.0, "steady_ips": None}, {"ips": 5.0, "steady_ips": 4.0}, {"ips": 4.0, "steady_ips": 6.0}]
    assert median_of_rounds(rows, ["ips", "steady_ips", "p50_ms"]) == {"ips": 4.0, "steady_ips": 5.0, "p50_ms": None}
    with pytest.raises(ValueError):
        median_of_rounds([], ["ips"])


@pytest.mark.parametrize("rounds", [1, 2])
def test_the_queue_comparison_does_not_let_a_speeding_host_pick_its_last_row(monkeypatch: pytest.MonkeyPatch, rounds: int) -> None:
    # Three queue setups of the same true speed, on a host that gets 10% faster with every level.
    import argparse

    levels: list[float] = []
    applied: list[dict[str, Any]] = []

    def level(url: str, case: Any, samples: Any, concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
        levels.append(4.0 * (1 + 0.1 * len(levels)))
        rate = levels[-1]
        return {
            "concurrency": concurrency, "requests": total, "errors": 0, "ips": rate, "steady_ips": rate, "p50_ms": 1.0,
            "p95_ms": 1.0, "mean_batch_size": 3.7, "machine_cpu_utilisation": 0.99, "model_replicas_cpu_share": 0.88,
        }

    monkeypatch.setattr(served, "measured_level", level)
    monkeypatch.setattr(served, "set_batching", lambda cluster, config, deployment, **changes: applied.append(changes))
    shipped = {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}
    config = {"applications": [{"deployments": [{"name": "stylize", "user_config": dict(shipped)}]}]}
    args = argparse.Namespace(queue_rounds=rounds, requests=8, seconds=1.0)
    case = Case("frost", "stylize", {}, ("image",))

    rows = served.compare_queues(None, config, "http://127.0.0.1:1", [case], {}, 16, args)

    assert [(r["queue"], r["batch_wait_timeout_s"]) for r in rows] == [("serve-batch", 0.0), ("serve-batch", 0.02), ("backlog", 0.0)]
    assert len(levels) == 3 * rounds and all(len(r["rounds"]) == rounds for r in rows)
    assert applied[-1] == {**shipped, "queue": "backlog"}  # the shipped user_config is put back
    rates = [r["steady_ips"] for r in rows]
    if rounds == 1:
        assert rates[2] > rates[0] * 1.15  # one fixed pass: the drift reads as a lead for the last row
    else:
        assert max(rates) == pytest.approx(min(rates))  # reversed passes: the same drift for every row


@pytest.mark.parametrize(("mode", "flag"), [("served", "--queue-rounds"), ("rembg", "--rembg-rounds")])
def test_a_round_count_below_one_is_refused_before_anything_runs(mode: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from stylefleet.tools import cli

    parser = cli.build_parser()
    command = ["bench", mode, *(["--rembg", "rembg"] if mode == "rembg" else [])]
    assert getattr(parser.parse_args([*command, flag, "3"]), flag[2:].replace("-", "_")) == 3
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*command, flag, "0"])
    assert exit_info.value.code == 2 and "at least 1 round" in capsys.readouterr().err


_BOOT = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
_BATCH = f"{_BOOT};ModelServer._timed (stylefleet/deployments/serve/serving.py:357)"


@pytest.mark.parametrize(
    ("stack", "stage"),
    [  # collapsed stacks as py-spy wrote them from a served remove-background replica
        (
            f"{_BATCH};ModelServer._infer (stylefleet/deployments/serve/serving.py:348);U2NetModel.infer "
            "(stylefleet/deployments/background.py:140);_run (stylefleet/deployments/onnx_session.py:210);"
            "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:321)",
            "onnxruntime",
        ),
        (
            f"{_BATCH};encode_outcomes (stylefleet/deployments/batching.py:300);encode (stylefleet/imageio.py:236);"
            "encode_png (stylefleet/imageio.py:248)",
            "encode",
        ),
        (
            f"{_BATCH};prepare_one (stylefleet/deployments/batching.py:120);U2NetModel.prepare "
            "(stylefleet/deployments/background.py:160);preprocess (stylefleet/deployments/background.py:54);"
            "Image.resize (PIL/Image.py:2438)",
            "prepare",
        ),
        (f"{_BATCH};decode_files (stylefleet/deployments/batching.py:160);decode (stylefleet/imageio.py:140)", "decode"),
        (f"{_BOOT};ReplicaActor.handle_request_with_rejection (ray/serve/_private/replica.py:3603)", "serve"),
    ],
)
def test_a_profiled_stack_is_put_in_its_stage(stack: str, stage: str) -> None:
    assert levels.summarise_stack(stack) == stage


def test_every_profiled_frame_names_a_function_the_package_defines() -> None:
    """The stages match frames by function and file: a moved file or renamed function must move them too."""
    for name, path in [(n, p) for _, n, p in levels.PROFILE_STAGES if p.startswith("stylefleet/")] + list(levels.BATCH_FRAMES):
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source, (name, path)
