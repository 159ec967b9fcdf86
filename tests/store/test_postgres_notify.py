"""PostgreSQL's wake-up: LISTEN/NOTIFY across processes, its recovery when the listening
connection is killed, and the poll-only mode for PgBouncer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from conveyor.store.base import JobsAvailable, Notice, NoticesLost
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import ClaimRequest, NewJob
from pg_server import PgTestServer

StoreFactory = Callable[..., Awaitable[PostgresStore]]
"""The ``stores`` fixture (tests/store/conftest.py)."""

LISTENING = "(query ILIKE 'LISTEN%' OR query ILIKE 'SELECT pg_advisory_lock%')"
"""A store's LISTEN connection, by the last statement it ran: LISTEN, then the lock on
its key for handoff offers."""


def _job(queue: str = "default") -> NewJob:
    return NewJob(kind="t", queue=queue, payload={}, priority=3, max_attempts=3, timeout_s=None)


async def _wait_for(notices: list[Notice], predicate: Callable[[Notice], bool]) -> float:
    start = time.monotonic()
    deadline = start + 5
    while time.monotonic() < deadline:
        if any(predicate(n) for n in notices):
            return time.monotonic() - start
        await asyncio.sleep(0.005)
    raise AssertionError(f"no matching notice within 5 s; got {notices}")


async def test_an_enqueue_in_one_process_wakes_listeners_of_another(stores: StoreFactory) -> None:
    worker_side = await stores()
    client_side = await stores()
    notices: list[Notice] = []
    worker_side.add_listener(notices.append)
    await _wait_for(notices, lambda n: n == JobsAvailable(None))  # listening now
    await client_side.enqueue([_job("video")])
    took = await _wait_for(notices, lambda n: n == JobsAvailable(frozenset({"video"})))
    assert took < 1.0


async def test_a_bulk_enqueue_sends_one_notice_per_queue(stores: StoreFactory) -> None:
    worker_side = await stores()
    client_side = await stores()
    notices: list[Notice] = []
    worker_side.add_listener(notices.append)
    await _wait_for(notices, lambda n: n == JobsAvailable(None))
    notices.clear()
    await client_side.enqueue([_job("a") for _ in range(500)] + [_job("b") for _ in range(500)])
    await _wait_for(notices, lambda n: n == JobsAvailable(frozenset({"b"})))
    await asyncio.sleep(0.2)
    assert sorted(n.queues for n in notices if isinstance(n, JobsAvailable) and n.queues) == [
        frozenset({"a"}),
        frozenset({"b"}),
    ]


async def test_the_listener_comes_back_after_its_connection_is_killed(
    stores: StoreFactory, pg: PgTestServer
) -> None:
    worker_side = await stores()
    client_side = await stores()
    notices: list[Notice] = []
    worker_side.add_listener(notices.append)
    await _wait_for(notices, lambda n: n == JobsAvailable(None))
    notices.clear()
    admin = await asyncpg.connect(pg.url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND " + LISTENING
        )
    finally:
        await admin.close()
    assert killed == 1
    # Reconnected: the listeners are told that anything may have happened meanwhile, and
    # that notices may have been lost...
    await _wait_for(notices, lambda n: n == JobsAvailable(None))
    await _wait_for(notices, lambda n: isinstance(n, NoticesLost))
    # ...and notices flow again.
    await client_side.enqueue([_job("after")])
    await _wait_for(notices, lambda n: n == JobsAvailable(frozenset({"after"})))


async def test_poll_only_mode_opens_no_listen_connection(
    stores: StoreFactory, pg: PgTestServer
) -> None:
    store = await stores(listen=False)
    store.add_listener(lambda notice: None)
    await asyncio.sleep(0.3)
    admin = await asyncpg.connect(pg.url)
    try:
        listening = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
            + LISTENING
        )
    finally:
        await admin.close()
    assert listening == 0
    # It still works as a store: the safety poll is the worker's business.
    await store.enqueue([_job()])
    result = await store.settle_and_claim(
        [], [], "w", ClaimRequest("w", {"default": 5}, 30, kinds=("t",))
    )
    assert len(result.claimed) == 1
