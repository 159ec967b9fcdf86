"""PostgreSQL: what a deadlock does to an exchange.

Two workers' exchanges can deadlock, rarely. A claim walks queued jobs with FOR UPDATE SKIP
LOCKED in READ COMMITTED; a job its snapshot saw queued but another worker has claimed
since is locked in its newest version (a running job of that worker) before the recheck
drops it, until the statement commits, so that worker's settle of the job waits for it. A
walk can wait too: when the row it is locking was being updated by a transaction that ends
in that instant, PostgreSQL goes on to lock the row's newer versions, waiting for whoever
holds them (``heap_lock_updated_tuple``, which ignores SKIP LOCKED). The statement is then
rolled back whole, and the worker runs it again (tests/engine/test_rolled_back_exchange.py).

The other transaction here is a plain connection: it holds a lock on one of the worker's
running jobs, as a walk's recheck leaves it, and then asks for another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from conveyor.store.base import TransactionRolledBack
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import ClaimRequest, NewJob, Outcome, OutcomeKind
from pg_server import PgTestServer

StoreFactory = Callable[..., Awaitable[PostgresStore]]
"""The ``stores`` fixture (tests/store/conftest.py)."""

W = "worker-1"


def _job(tenant_id: str = "a") -> NewJob:
    return NewJob(
        kind="t",
        queue="q",
        payload={},
        priority=3,
        max_attempts=3,
        timeout_s=None,
        tenant_id=tenant_id,
    )


def _claim(n: int) -> ClaimRequest:
    return ClaimRequest(W, {"q": n}, 30.0, kinds=("t",))


async def _running(store: PostgresStore, n: int, tenants: int = 1) -> list[tuple[int, int]]:
    """Enqueue ``n`` jobs over ``tenants`` tenants and claim them under W: their (id,
    attempt)."""
    await store.enqueue([_job(f"t{i % tenants}") for i in range(n)])
    result = await store.settle_and_claim([], [], W, _claim(n))
    assert len(result.claimed) == n
    return [(j.id, j.attempt) for j in result.claimed]


async def _blocked_by(db: asyncpg.Connection, holder: asyncpg.Connection) -> int:
    """The backend that waits for ``holder``'s transaction (the exchange), once it does."""
    holder_pid = holder.get_server_pid()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            holder_pid,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the exchange never waited for the lock on its job")


async def _lock(conn: asyncpg.Connection, job_id: int) -> None:
    await conn.execute("SELECT 1 FROM conveyor_jobs WHERE id = $1 FOR UPDATE", job_id)


async def test_a_deadlocked_exchange_is_rolled_back_whole_and_may_run_again(
    stores: StoreFactory, db: asyncpg.Connection, pg: PgTestServer
) -> None:
    # A real deadlock with the exchange: it settles its first job, then waits for the
    # second, which the other transaction holds, while that transaction waits for the
    # first. The other transaction checks late, so the exchange is the one rolled back.
    store = await stores()
    (first, a1), (second, a2) = await _running(store, 2)
    outcomes = [
        Outcome(first, a1, OutcomeKind.COMPLETED, "q"),
        Outcome(second, a2, OutcomeKind.COMPLETED, "q"),
    ]
    other = await asyncpg.connect(pg.url)
    try:
        await other.execute("SET deadlock_timeout = '10s'")
        tx = other.transaction()
        await tx.start()
        await _lock(other, second)
        exchange = asyncio.create_task(store.settle_and_claim(outcomes, [], W, None))
        await _blocked_by(db, other)
        waiting = asyncio.create_task(_lock(other, first))
        with pytest.raises(TransactionRolledBack, match="deadlock"):
            await asyncio.wait_for(exchange, 10)
        await asyncio.wait_for(waiting, 10)
        states = await db.fetch(
            "SELECT state FROM conveyor_jobs WHERE id = ANY($1::bigint[])", [first, second]
        )
        await tx.rollback()
    finally:
        await other.close()
    # Nothing of the statement was kept: both jobs were still running under W.
    assert [r["state"] for r in states] == ["running", "running"]
    again = await store.settle_and_claim(outcomes, [], W, None)
    assert again.applied == (True, True)
