"""PostgreSQL: a store whose pooled connections the server ends recovers on its own."""

from __future__ import annotations

import asyncio
import collections
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from conveyor.store.base import StoreError, TransactionRolledBack
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import JobFilter
from pg_server import PgTestServer

TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


async def test_terminated_pooled_connections_fail_as_store_errors_then_recover(
    pg: PgTestServer,
) -> None:
    """A connection the server ended while it sat in the pool fails at most one
    statement, with StoreError (which callers retry), and is then replaced. asyncpg may
    read the server's FATAL message before it notices the closed socket and then raise
    InternalClientError ("cannot switch to state …; another operation (2) is in
    progress", MagicStack/asyncpg#1069): that too must be a StoreError, or a worker's
    exchange loop dies of it. The pauses vary so that the next statement lands at
    different points of that race."""
    pool_size = 2
    store = PostgresStore(pg.url, pool_size=pool_size)
    await store.open()
    admin = await asyncpg.connect(pg.url)
    failures: collections.Counter[str] = collections.Counter()
    try:
        for i in range(30):
            await store.list_jobs(JobFilter(limit=1))
            assert await admin.fetchval(f"SELECT count(*) FROM ({TERMINATE}) t") >= 1
            await asyncio.sleep(0.001 * (i % 4))
            # Each pooled connection (one per slot at most) fails once at most.
            for _ in range(pool_size + 1):
                try:
                    assert await store.list_jobs(JobFilter(limit=1)) == []
                    break
                except StoreError as exc:
                    failures[type(exc.__cause__).__name__] += 1
            else:
                raise AssertionError(f"no statement served after {pool_size} failures")
    finally:
        await admin.close()
        await store.close()
    assert set(failures) <= {
        "InternalClientError",
        "ConnectionDoesNotExistError",
        "AdminShutdownError",
    }, failures


async def test_the_store_forgets_the_server_pids_of_connections_it_lost(pg: PgTestServer) -> None:
    """The store ignores notices sent by its own pooled connections (it told its listeners
    already), which it recognises by their server pids. A pid outlives nothing: once its
    connection is gone the server may give it to another client, whose notices must not be
    dropped, so the store holds exactly the pids of its live connections."""
    store = PostgresStore(pg.url, pool_size=2)
    await store.open()
    admin = await asyncpg.connect(pg.url)

    async def pool_pids() -> set[int]:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return {r[0] for r in rows}

    async def settled(expected: set[int]) -> bool:
        for _ in range(200):
            if store._db.own_backends == expected:
                return True
            await asyncio.sleep(0.01)
        return False

    try:
        await store.list_jobs(JobFilter(limit=1))
        first = await pool_pids()
        assert first
        assert await settled(first), (store._db.own_backends, first)

        await admin.execute(TERMINATE)
        for _ in range(3):
            try:
                await store.list_jobs(JobFilter(limit=1))
                break
            except StoreError:
                continue
        now = await pool_pids()
        assert now
        assert not now & first
        assert await settled(now), (store._db.own_backends, now)
    finally:
        await admin.close()
        await store.close()
    assert store._db.own_backends == set()


async def test_calls_that_find_the_stores_own_connection_busy_go_to_the_pool(
    pg: PgTestServer,
) -> None:
    """The store keeps one connection of its own for calls that find it free (no pool
    hop on the enqueue-to-start path); calls made meanwhile must not queue behind it."""
    store = PostgresStore(pg.url, pool_size=2)
    await store.open()
    try:

        async def slow(conn: Any) -> tuple[int, datetime, datetime]:
            """The backend's pid and when, on the server's clock, the call began and ended."""
            began = await conn.fetchval("SELECT clock_timestamp()")
            await conn.execute("SELECT pg_sleep(0.3)")
            ended = await conn.fetchval("SELECT clock_timestamp()")
            return conn.get_server_pid(), began, ended

        calls = await asyncio.gather(*(store._db.run(slow) for _ in range(3)))
        pids = [pid for pid, _, _ in calls]
        assert len(set(pids)) == 3
        # The three ran at once on the server: each began before any of them ended.
        assert max(began for _, began, _ in calls) < min(ended for _, _, ended in calls)
        # Alone, a call takes the store's own connection again.
        assert (await store._db.run(slow))[0] == pids[0]
    finally:
        await store.close()


async def test_a_deadlock_and_a_serialization_failure_are_transactions_rolled_back(
    pg: PgTestServer,
) -> None:
    """Class 40 errors (the server undid the transaction to let another go on) come out as
    TransactionRolledBack, the StoreError a worker runs again at once: here a real
    deadlock (two transactions locking two rows in opposite order) and a real
    serialization failure (an update in REPEATABLE READ of a row changed since its
    snapshot)."""
    store = PostgresStore(pg.url, pool_size=2)
    await store.open()
    other = await asyncpg.connect(pg.url)
    try:
        await other.execute("CREATE TABLE IF NOT EXISTS rollback_pair (id int PRIMARY KEY, n int)")
        await other.execute("TRUNCATE rollback_pair")
        await other.execute("INSERT INTO rollback_pair VALUES (1, 0), (2, 0)")
        # The other side checks for a deadlock late, so the store's call is the one undone.
        await other.execute("SET deadlock_timeout = '10s'")
        locked_first = asyncio.Event()

        async def one_then_two(conn: Any) -> None:
            await conn.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 1")
            locked_first.set()
            await conn.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 2")

        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 2")
        call = asyncio.create_task(store._db.transact(one_then_two))
        await asyncio.wait_for(locked_first.wait(), 10)
        waiting = asyncio.create_task(
            other.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 1")
        )
        with pytest.raises(TransactionRolledBack, match="DeadlockDetectedError"):
            await asyncio.wait_for(call, 10)
        await asyncio.wait_for(waiting, 10)
        await tx.commit()

        read = asyncio.Event()
        changed = asyncio.Event()

        async def update_after_a_change(conn: Any) -> None:
            await conn.fetchval("SELECT n FROM rollback_pair WHERE id = 1")
            read.set()
            await changed.wait()
            await conn.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 1")

        call = asyncio.create_task(
            store._db.transact(update_after_a_change, isolation="repeatable_read")
        )
        await asyncio.wait_for(read.wait(), 10)
        await other.execute("UPDATE rollback_pair SET n = n + 1 WHERE id = 1")
        changed.set()
        with pytest.raises(TransactionRolledBack, match="SerializationError"):
            await asyncio.wait_for(call, 10)
        # Undone whole: only the other side's changes are there.
        rows = await other.fetch("SELECT id, n FROM rollback_pair ORDER BY id")
        assert [(r["id"], r["n"]) for r in rows] == [(1, 2), (2, 1)]
    finally:
        await other.execute("DROP TABLE IF EXISTS rollback_pair")
        await other.close()
        await store.close()
