"""Memory-aware batching, pure: chunking by weight, the lowered limit and its cool-down, the probe."""

from __future__ import annotations

import pytest
import torch

from stylefleet.deployments.memory import BatchLimiter, chunks, is_out_of_memory, probe_largest_batch, run_halving, weight_of
from stylefleet.errors import Overloaded


def test_chunks_stay_under_the_limit_in_order() -> None:
    assert chunks([1, 1, 2, 3, 1], 3, lambda w: w) == [[1, 1], [2], [3], [1]]
    assert chunks([5, 1], 3, lambda w: w) == [[5], [1]]  # heavier than the limit: alone


def test_the_limit_is_the_smallest_of_configured_probed_and_lowered() -> None:
    clock = [0.0]
    limiter = BatchLimiter(configured=16, cooldown_s=10, clock=lambda: clock[0])
    limiter.probed = 12
    assert limiter.limit == 12
    assert limiter.record_oom(8) == 4 and limiter.limit == 4
    clock[0] = 9.9
    assert limiter.limit == 4
    clock[0] = 10.0
    assert limiter.limit == 12 and limiter.oom_total == 1


def test_a_second_oom_lowers_further_and_restarts_the_cool_down() -> None:
    clock = [0.0]
    limiter = BatchLimiter(configured=16, cooldown_s=10, clock=lambda: clock[0])
    limiter.record_oom(16)
    clock[0] = 8.0
    limiter.record_oom(8)
    clock[0] = 15.0
    assert limiter.limit == 4


def test_halving_reaches_the_single_culprit_size() -> None:
    seen: list[int] = []

    def call(items: list[int]) -> list[int]:
        seen.append(len(items))
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [i * 10 for i in items]

    limiter = BatchLimiter(configured=8)
    assert run_halving([1, 2, 3], call, limiter, lambda _: 1) == [10, 20, 30]
    assert seen == [3, 1, 2, 1, 1]
    assert limiter.limit == 1


def test_other_errors_are_not_taken_for_oom() -> None:
    def call(items: list[int]) -> list[int]:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        run_halving([1, 2], call, BatchLimiter(configured=8), lambda _: 1)
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_one_item_that_does_not_fit_is_overloaded() -> None:
    def call(items: list[int]) -> list[int]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(Overloaded):
        run_halving([1], call, BatchLimiter(configured=8), lambda _: 1)


@pytest.mark.parametrize(("fits", "upper", "expected"), [(0, 32, 0), (1, 32, 1), (5, 32, 5), (32, 32, 32), (100, 24, 24), (17, 20, 17)])
def test_probe_finds_the_largest_batch(fits: int, upper: int, expected: int) -> None:
    def try_batch(n: int) -> None:
        if n > fits:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert probe_largest_batch(try_batch, upper) == expected


def test_weight_is_pixels_times_steps_in_reference_units() -> None:
    unit = 512 * 512 * 25
    assert weight_of(512 * 512, 25, unit) == 1
    assert weight_of(64 * 64, 2, unit) == 1
    assert weight_of(768 * 768, 30, unit) == 3
