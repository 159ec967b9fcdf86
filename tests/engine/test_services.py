"""The runner of a worker's side services (lease keeper, pruner, memory guard): a pass the
database rolled back runs again at once, a bounded number of times; any other failure
waits for the next tick."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.engine.exchange import IMMEDIATE_RETRIES
from conveyor.engine.services import every
from conveyor.store.base import StoreError, TransactionRolledBack

INTERVAL = 30.0
"""Far longer than a test waits: a pass run before it is run at once."""


async def _passes_before_the_sleep(failures: list[Exception]) -> int:
    """How many passes ``every`` runs in half a second (before its first sleep ends),
    each raising the next of ``failures``, then passing."""
    calls = 0

    async def action() -> None:
        nonlocal calls
        calls += 1
        if calls <= len(failures):
            raise failures[calls - 1]

    task = asyncio.create_task(every(INTERVAL, action, name="lease-keeper", worker_id="w1"))
    try:
        await asyncio.sleep(0.5)
        return calls
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_rolled_back_pass_runs_again_at_once() -> None:
    rolled_back = [TransactionRolledBack("deadlock detected")] * 2
    # Two rolled back, the third passes: all three before the first sleep.
    assert await _passes_before_the_sleep(rolled_back) == 3


async def test_rolled_back_passes_in_a_row_stop_at_the_limit_and_wait_for_the_tick() -> None:
    always = [TransactionRolledBack("deadlock detected")] * (IMMEDIATE_RETRIES + 5)
    assert await _passes_before_the_sleep(always) == IMMEDIATE_RETRIES + 1


async def test_another_failure_waits_for_the_next_tick() -> None:
    assert await _passes_before_the_sleep([StoreError("database unreachable")]) == 1
