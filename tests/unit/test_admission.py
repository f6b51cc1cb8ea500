"""MemoryAdmission: reservations against a replica's memory budget (fits, waits, refused).

Each test drives the event loop by hand: a waiter's turn is observed through the controller's
own counters after yielding to the loop, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from stylefleet.deployments.admission import DECODE_BYTES_PER_PIXEL, MemoryAdmission, MemoryCost
from stylefleet.deployments.kinds import KINDS
from stylefleet.errors import ImageTooLargeForMemory, Overloaded, PayloadTooLarge

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_what_fits_is_admitted_at_once() -> None:
    async def main() -> int:
        admission = MemoryAdmission(100, max_waiting=4)
        await admission.acquire(60)
        await admission.acquire(40)
        return admission.reserved_bytes

    assert run(main()) == 100


def test_what_does_not_fit_now_waits_until_memory_is_released() -> None:
    async def main() -> list[str]:
        admission = MemoryAdmission(100, max_waiting=4)
        events: list[str] = []
        await admission.acquire(70)

        async def second() -> None:
            await admission.acquire(50)
            events.append("second admitted")

        task = asyncio.create_task(second())
        await settle()
        events.append(f"waiting {admission.waiting}")
        admission.release(70)
        await task
        events.append(f"reserved {admission.reserved_bytes}")
        return events

    assert run(main()) == ["waiting 1", "second admitted", "reserved 50"]


def test_an_estimate_over_the_whole_budget_is_refused_at_once_naming_the_largest_size() -> None:
    async def main() -> ImageTooLargeForMemory:
        admission = MemoryAdmission(100, max_waiting=4)
        await admission.acquire(90)  # busy: the refusal must not wait for it
        with pytest.raises(ImageTooLargeForMemory) as caught:
            await admission.acquire(101, largest_side=2896)
        assert admission.waiting == 0 and admission.reserved_bytes == 90
        return caught.value

    error = run(main())
    assert error.status == 413 and error.code == "image_too_large_for_memory"
    assert isinstance(error, PayloadTooLarge)
    assert "largest accepted at these settings: 2896x2896 px" in error.message


def test_waiters_past_the_bound_get_overloaded_with_retry_after() -> None:
    async def main() -> Overloaded:
        admission = MemoryAdmission(100, max_waiting=1, retry_after_s=3)
        await admission.acquire(100)
        waiter = asyncio.create_task(admission.acquire(10))
        await settle()
        with pytest.raises(Overloaded) as caught:
            await admission.acquire(10)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        return caught.value

    error = run(main())
    assert error.status == 503 and error.headers["Retry-After"] == "3"


def test_waiters_are_admitted_first_in_first_out_a_small_one_never_overtakes() -> None:
    async def main() -> list[str]:
        admission = MemoryAdmission(100, max_waiting=4)
        order: list[str] = []
        await admission.acquire(80)

        async def request(name: str, need: int) -> None:
            await admission.acquire(need)
            order.append(name)

        big = asyncio.create_task(request("big", 90))
        await settle()
        small = asyncio.create_task(request("small", 20))  # fits beside the 80, but the big one is first
        await settle()
        order.append("nothing yet")
        admission.release(80)
        await big
        await settle()
        order.append(f"small waits: {admission.waiting}")
        admission.release(90)
        await small
        return order

    assert run(main()) == ["nothing yet", "big", "small waits: 1", "small"]


def test_the_reservation_is_released_when_the_request_fails() -> None:
    async def main() -> int:
        admission = MemoryAdmission(100, max_waiting=4)
        with pytest.raises(RuntimeError):
            async with admission.reserve(60):
                raise RuntimeError("the model failed")
        return admission.reserved_bytes

    assert run(main()) == 0


def test_the_reservation_is_released_when_a_running_request_is_cancelled() -> None:
    async def main() -> int:
        admission = MemoryAdmission(100, max_waiting=4)
        running = asyncio.Event()

        async def request() -> None:
            async with admission.reserve(60):
                running.set()
                await asyncio.Event().wait()  # the model call that never ends before the cancel

        task = asyncio.create_task(request())
        await running.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return admission.reserved_bytes

    assert run(main()) == 0


def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_one_in() -> None:
    async def main() -> tuple[int, int]:
        admission = MemoryAdmission(100, max_waiting=4)
        await admission.acquire(50)
        head = asyncio.create_task(admission.acquire(80))  # holds the queue
        await settle()
        behind = asyncio.create_task(admission.acquire(40))  # fits now, but waits behind the head
        await settle()
        head.cancel()
        await asyncio.gather(head, return_exceptions=True)
        await behind
        return admission.reserved_bytes, admission.waiting

    assert run(main()) == (90, 0)


def test_a_waiter_granted_as_it_is_cancelled_gives_its_memory_back() -> None:
    async def main() -> int:
        admission = MemoryAdmission(100, max_waiting=4)
        await admission.acquire(100)
        waiter = asyncio.create_task(admission.acquire(30))
        await settle()
        admission.release(100)  # grants the waiter (its future is set) ...
        waiter.cancel()  # ... and its caller goes away before it resumes
        await asyncio.gather(waiter, return_exceptions=True)
        return admission.reserved_bytes

    assert run(main()) == 0


@pytest.mark.parametrize("budget", [0, -1])
def test_a_budget_must_be_positive(budget: int) -> None:
    with pytest.raises(ValueError):
        MemoryAdmission(budget, max_waiting=1)


def test_the_largest_side_is_the_largest_square_that_fits() -> None:
    cost = MemoryCost(bytes_per_pixel=600.0)
    budget = 5 * 2**30
    side = cost.largest_side(budget)
    assert cost.of(side * side, side * side) <= budget < cost.of((side + 1) ** 2, (side + 1) ** 2)


def test_a_request_costs_its_output_pixels_and_its_decoded_upload() -> None:
    cost = MemoryCost(bytes_per_pixel=100.0, fixed_bytes=1000)
    assert cost.of(10, 20) == 1000 + 100 * 10 + DECODE_BYTES_PER_PIXEL * 20


@pytest.mark.parametrize("name", ["multistyle26", "arbitrary", "u2netp", "haar-face"])
def test_every_loaded_kind_knows_its_memory_per_pixel(name: str) -> None:
    kind = KINDS[name]
    assert kind.memory is not None and kind.memory.bytes_per_pixel > 0
    assert kind.memory_budget_bytes is not None and kind.memory_budget_bytes > 0


def test_a_param_may_add_a_fixed_part() -> None:
    cost = MemoryCost(bytes_per_pixel=10.0, fixed_bytes=100, fixed_bytes_with=("alpha_matting", 1000))
    assert cost.of(1, 0, {"alpha_matting": True}) - cost.of(1, 0, {}) == 1000
    assert cost.of(1, 0, {"alpha_matting": "true"}) == cost.of(1, 0, {"alpha_matting": True})
    assert cost.largest_side(10_000, {"alpha_matting": True}) < cost.largest_side(10_000)
