"""PostgreSQL: a request is created in one statement, so the races the contract suite
can only provoke by chance are forced here: another transaction holds the key the
statement needs until the statement is waiting for it, then commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from conveyor.store.base import DataRejected
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import JobFilter, NewJob, NewRequest
from pg_server import PgTestServer

INSERT_JOB = (
    "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
    "max_attempts, run_at, unique_key, created_at) "
    "VALUES ('default', 'default', 'test.noop', 2, 'queued', '{}', 3, now(), $1, now()) "
    "RETURNING id"
)
INSERT_REQUEST = (
    "INSERT INTO conveyor_requests (tenant_id, caller_id, kind, input, job_id, "
    "idempotency_key, created_at) "
    "VALUES ('default', 'caller-1', 'test.noop', '{}', $1, $2, now()) RETURNING id"
)


@pytest.fixture
async def store(pg: PgTestServer) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(pg.url)
    await opened.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


def _request(key: str | None = None, unique_key: str | None = None) -> NewRequest:
    job = NewJob("test.noop", "default", {}, 2, 3, None, unique_key=unique_key)
    return NewRequest("test.noop", {}, "caller-1", job, idempotency_key=key)


async def _blocked(task: asyncio.Task[object]) -> None:
    await asyncio.sleep(0.3)
    assert not task.done(), "the statement did not wait for the db transaction"


async def test_a_key_committed_while_the_statement_waits_returns_that_request(
    store: PostgresStore, db: asyncpg.Connection
) -> None:
    async with db.transaction():
        job_id = await db.fetchval(INSERT_JOB, None)
        request_id = await db.fetchval(INSERT_REQUEST, job_id, "k")
        task = asyncio.create_task(store.create_request(_request(key="k")))
        await _blocked(task)
    stored = await task
    assert not stored.created
    assert (stored.request.id, stored.request.job.id) == (request_id, job_id)
    assert stored.queue_position == 0
    assert [j.id for j in await store.list_jobs(JobFilter())] == [job_id]


async def test_a_key_rolled_back_while_the_statement_waits_is_free(
    store: PostgresStore, db: asyncpg.Connection
) -> None:
    tx = db.transaction()
    await tx.start()
    job_id = await db.fetchval(INSERT_JOB, None)
    await db.fetchval(INSERT_REQUEST, job_id, "k")
    task = asyncio.create_task(store.create_request(_request(key="k")))
    await _blocked(task)
    await tx.rollback()
    stored = await task
    assert stored.created
    assert [j.id for j in await store.list_jobs(JobFilter())] == [stored.request.job.id]


async def test_a_unique_key_taken_while_the_statement_waits_joins_that_job(
    store: PostgresStore, db: asyncpg.Connection
) -> None:
    async with db.transaction():
        job_id = await db.fetchval(INSERT_JOB, "u")
        task = asyncio.create_task(store.create_request(_request(unique_key="u")))
        await _blocked(task)
    stored = await task
    assert stored.created
    assert stored.request.job.id == job_id
    assert [j.id for j in await store.list_jobs(JobFilter())] == [job_id]


async def test_input_the_database_cannot_hold_is_refused_data(store: PostgresStore) -> None:
    new = _request()
    with pytest.raises(DataRejected, match="could not be stored"):
        await store.create_request(NewRequest("test.noop", {"a": "\u0000"}, "caller-1", new.job))
    assert await store.list_jobs(JobFilter()) == []


@pytest.mark.parametrize("key", [None, "k"], ids=["plain", "with an idempotency key"])
async def test_input_that_is_not_json_is_refused_data_and_alone(
    store: PostgresStore, key: str | None
) -> None:
    """A lone surrogate cannot be encoded: that request is refused, not its batch."""
    bad = NewRequest("test.noop", {"s": "\udfff"}, "caller-1", _request().job, idempotency_key=key)
    results = await asyncio.gather(
        store.create_request(bad), store.create_request(_request()), return_exceptions=True
    )
    assert isinstance(results[0], DataRejected)
    assert not isinstance(results[1], BaseException)
    assert [j.id for j in await store.list_jobs(JobFilter())] == [results[1].request.job.id]


async def test_a_repeat_with_input_the_database_cannot_hold_finds_the_first(
    store: PostgresStore,
) -> None:
    first = await store.create_request(_request(key="k"))
    bad = NewRequest("test.noop", {"a": "\u0000"}, "caller-1", _request().job, idempotency_key="k")
    again = await store.create_request(bad)
    assert not again.created
    assert again.request.id == first.request.id


async def test_a_request_the_database_refuses_fails_alone_among_those_sent_with_it(
    store: PostgresStore,
) -> None:
    new = _request()
    bad = NewRequest("test.noop", {"a": "\u0000"}, "caller-1", new.job)
    results = await asyncio.gather(
        *(store.create_request(_request()) for _ in range(3)),
        store.create_request(bad),
        *(store.create_request(_request()) for _ in range(3)),
        return_exceptions=True,
    )
    assert isinstance(results[3], DataRejected)
    good = [r for i, r in enumerate(results) if i != 3]
    assert all(not isinstance(r, BaseException) and r.created for r in good)
    assert len(await store.list_jobs(JobFilter())) == 6


async def test_plain_requests_that_arrive_together_share_a_statement(
    store: PostgresStore,
) -> None:
    stored = await asyncio.gather(*(store.create_request(_request()) for _ in range(50)))
    # created_at is the transaction's start (now()): requests that shared a statement share
    # it. The first goes alone, the db 49 wait for it and go together.
    statements = {s.request.created_at for s in stored}
    assert len(statements) < 10
    assert len(await store.list_jobs(JobFilter(limit=100))) == 50
