"""A worker's exchange that PostgreSQL rolled back to break a real deadlock is run again at
once, its reports held for it, instead of waiting out the backoff of an outage; past
IMMEDIATE_RETRIES in a row it backs off as from any failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

import conveyor
from conveyor.engine.exchange import IMMEDIATE_RETRIES, Exchanger, backoff_delay
from conveyor.store.base import TransactionRolledBack
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import ClaimRequest, NewJob, Outcome, OutcomeKind
from pg_server import PgTestServer

W = "worker-1"


@pytest.fixture
def emptied(pg_server: PgTestServer) -> PgTestServer:
    pg_server.empty()
    return pg_server


@pytest.fixture
async def pg_store(emptied: PgTestServer) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(emptied.url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _deadlocked_exchange(
    store: PostgresStore, exchanger: Exchanger, url: str
) -> TransactionRolledBack:
    """Run the exchange into a real deadlock: it settles its first job and waits for the
    second, which another transaction holds while it waits for the first. The other side
    checks late, so the exchange is the one rolled back."""
    [first, second] = exchanger.outcome_job_ids()
    other = await asyncpg.connect(url)
    try:
        await other.execute("SET deadlock_timeout = '10s'")
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM conveyor_jobs WHERE id = $1 FOR UPDATE", second)
        exchange = asyncio.create_task(
            exchanger.exchange(None, began=time.monotonic(), rescue=False, withdraw=False)
        )
        deadline = time.monotonic() + 10
        while not await other.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            other.get_server_pid(),
        ):
            assert time.monotonic() < deadline, "the exchange never waited for the job"
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(
            other.execute("SELECT 1 FROM conveyor_jobs WHERE id = $1 FOR UPDATE", first)
        )
        with pytest.raises(TransactionRolledBack) as caught:
            await asyncio.wait_for(exchange, 10)
        await asyncio.wait_for(waiting, 10)
        await tx.rollback()
    finally:
        await other.close()
    assert "deadlock" in str(caught.value)
    return caught.value


async def test_a_deadlocked_exchange_runs_again_at_once(
    pg_store: PostgresStore, pg_server: PgTestServer
) -> None:
    def job() -> NewJob:
        return NewJob(kind="t", queue="q", payload={}, priority=3, max_attempts=3, timeout_s=None)

    await pg_store.enqueue([job(), job()])
    claimed = await pg_store.settle_and_claim(
        [], [], W, ClaimRequest(W, {"q": 2}, 30.0, kinds=("t",))
    )
    exchanger = Exchanger(pg_store, W, conveyor.Registry(), 10.0, handoff=None)
    for j in claimed.claimed:
        exchanger.hold(Outcome(j.id, j.attempt, OutcomeKind.COMPLETED, j.queue))
    never = asyncio.Event()

    exc = await _deadlocked_exchange(pg_store, exchanger, pg_server.url)
    began = time.monotonic()
    adopt = await exchanger.recover(exc, never)
    waited = time.monotonic() - began
    # No pause (the first backoff is backoff_delay(1)), no failure counted, the reports
    # held again; adoption asked for, in case a statement before it had claimed.
    assert waited < backoff_delay(1) / 2, waited
    assert (exchanger.failures, exchanger.rolled_back, exchanger.held) == (0, 1, 2)
    assert adopt is True

    result = await exchanger.exchange(None, began=time.monotonic(), rescue=False, withdraw=False)
    assert result.applied == (True, True)
    jobs = [await pg_store.get_job(j.id) for j in claimed.claimed]
    assert [j.state if j else None for j in jobs] == [conveyor.JobState.COMPLETED] * 2


async def test_rolled_back_exchanges_past_the_bound_back_off(
    pg_store: PostgresStore,
) -> None:
    exchanger = Exchanger(pg_store, W, conveyor.Registry(), 10.0, handoff=None)
    exc = TransactionRolledBack("database 'x': DeadlockDetectedError: deadlock detected")
    # Set: a backoff returns at once, yet counts the failure.
    stopped = asyncio.Event()
    stopped.set()
    for _ in range(IMMEDIATE_RETRIES):
        await exchanger.recover(exc, stopped)
    assert (exchanger.failures, exchanger.rolled_back) == (0, IMMEDIATE_RETRIES)
    await exchanger.recover(exc, stopped)
    assert exchanger.failures == 1
    exchanger.passed()
    assert (exchanger.failures, exchanger.rolled_back) == (0, 0)
