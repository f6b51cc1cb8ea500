"""GPU shares on the CPU: the memory caps two replicas on one card get, as arithmetic."""

from __future__ import annotations

import pytest

from stylefleet.gpu import DEFAULT_HEADROOM_BYTES, memory_cap_bytes, torch_memory_fraction

GIB = 2**30
CARDS = [16 * GIB, 24 * GIB, 40 * GIB, 80 * GIB]


@pytest.mark.parametrize("total", CARDS)
@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.25, 0.25, 0.25, 0.25), (0.8, 0.1, 0.1)])
def test_onnx_caps_of_shares_that_fill_the_card_leave_each_context_its_headroom(total: int, shares: tuple[float, ...]) -> None:
    caps = [memory_cap_bytes(s, total) for s in shares]
    assert sum(caps) + len(shares) * DEFAULT_HEADROOM_BYTES <= total


@pytest.mark.parametrize("total", CARDS)
@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.25, 0.25, 0.25, 0.25), (0.8, 0.1, 0.1)])
def test_torch_fractions_of_shares_that_fill_the_card_leave_each_context_its_headroom(total: int, shares: tuple[float, ...]) -> None:
    allocators = [torch_memory_fraction(s, total) * total for s in shares]
    assert sum(allocators) + len(shares) * DEFAULT_HEADROOM_BYTES <= total + 1  # float rounding


def test_torch_and_onnx_caps_are_the_same_bytes() -> None:
    total = 24 * GIB
    assert torch_memory_fraction(0.5, total) * total == pytest.approx(memory_cap_bytes(0.5, total))


def test_half_a_card_is_half_less_the_headroom() -> None:
    assert memory_cap_bytes(0.5, 80 * GIB) == 40 * GIB - DEFAULT_HEADROOM_BYTES
    assert torch_memory_fraction(0.5, 80 * GIB) == pytest.approx(0.5 - DEFAULT_HEADROOM_BYTES / (80 * GIB))


def test_a_share_above_one_is_the_whole_card() -> None:
    assert memory_cap_bytes(2.0, 16 * GIB) == memory_cap_bytes(1.0, 16 * GIB)
    assert torch_memory_fraction(2.0, 16 * GIB) == torch_memory_fraction(1.0, 16 * GIB) < 1.0


def test_a_share_smaller_than_the_headroom_caps_at_zero_not_below() -> None:
    assert memory_cap_bytes(0.01, 16 * GIB) == 0
    assert torch_memory_fraction(0.01, 16 * GIB) == 0.0


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_no_share_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="num_gpus"):
        memory_cap_bytes(bad, 16 * GIB)


def test_without_the_card_size_the_fraction_is_the_share_itself() -> None:
    assert torch_memory_fraction(0.25) == 0.25 and torch_memory_fraction(1.5) == 1.0
