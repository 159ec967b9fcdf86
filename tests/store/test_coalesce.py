"""Coalescer: concurrent calls folded into batches without a timer."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.store.coalesce import Coalescer


class Doubler:
    """Doubles numbers a batch at a time, noting each batch; odd numbers over 100 fail."""

    def __init__(self, delay: float = 0.01) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        return [ValueError(f"odd {n}") if n > 100 and n % 2 else n * 2 for n in items]


async def test_a_lone_call_goes_at_once() -> None:
    run = Doubler()
    coalesce = Coalescer(run)
    assert await coalesce(3) == 6
    assert run.batches == [[3]]


async def test_calls_made_while_a_batch_is_in_flight_go_together() -> None:
    run = Doubler()
    coalesce = Coalescer(run)
    results = await asyncio.gather(*(coalesce(n) for n in range(10)))
    assert results == [n * 2 for n in range(10)]
    # The first call starts the drainer; the nine made before it ran join the first batch.
    assert run.batches == [list(range(10))]
    first = asyncio.create_task(coalesce(1))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalesce(n)) for n in (2, 3)]
    assert [await t for t in (first, *later)] == [2, 4, 6]
    assert run.batches[1:] == [[1], [2, 3]]


async def test_batches_are_capped() -> None:
    run = Doubler()
    coalesce = Coalescer(run, max_batch=4)
    await asyncio.gather(*(coalesce(n) for n in range(10)))
    assert [len(b) for b in run.batches] == [4, 4, 2]


async def test_each_caller_gets_its_own_failure() -> None:
    coalesce = Coalescer(Doubler())
    results = await asyncio.gather(coalesce(2), coalesce(101), coalesce(4), return_exceptions=True)
    assert results[0] == 4
    assert results[2] == 8
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConnectionError("database gone")
        return items

    coalesce = Coalescer(flaky)
    first = asyncio.gather(coalesce(1), coalesce(2), return_exceptions=True)
    await asyncio.sleep(0.001)
    second = asyncio.create_task(coalesce(3))
    assert [type(r) for r in await first] == [ConnectionError, ConnectionError]
    assert await second == 3


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    run = Doubler(delay=0.05)
    coalesce = Coalescer(run)
    gone = asyncio.create_task(coalesce(1))
    stays = asyncio.create_task(coalesce(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    assert await stays == 4
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert run.batches == [[1, 2]]


async def test_close_waits_for_calls_in_flight() -> None:
    run = Doubler(delay=0.05)
    coalesce = Coalescer(run)
    task = asyncio.create_task(coalesce(5))
    await asyncio.sleep(0)
    await coalesce.close()
    assert task.done()
    assert task.result() == 10


def test_a_batch_needs_room_for_one_call() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(Doubler(), max_batch=0)
