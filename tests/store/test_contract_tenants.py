"""Tenant scoping of the store contract, on every store: a verb called for a tenant finds,
changes and counts that tenant's rows only, and another tenant's id answers as no row
does; called with no tenant (an operator, the CLI, a worker) it sees every tenant's. On
PostgreSQL also as the API's store, whose calls act as conveyor_api under row security."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from contract_support import claim_one, enqueue_one, failed, get, settle

from conveyor.store.base import Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import (
    JobFilter,
    JobState,
    NewJob,
    NewRequest,
    QueueStats,
    RequestFilter,
)
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

NewJobFactory = Callable[..., NewJob]

A = "tenant-a"
B = "tenant-b"


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-as-api"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each store, and the PostgreSQL store the API opens (``role="auto"``)."""
    if request.param != "sqlite":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    kind: str = request.param
    return kind


@pytest.fixture
async def store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    opened: Store
    if kind == "sqlite":
        opened = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    else:
        server: PgTestServer = request.getfixturevalue("pg_server")
        opened = PostgresStore(server.url, role="auto" if kind == "postgresql-as-api" else "none")
    await opened.open()
    try:
        await opened.migrate()
        if kind == "postgresql-as-api":
            assert isinstance(opened, PostgresStore)
            assert opened.role == "conveyor_api"
        yield opened
    finally:
        await opened.close()


def _request(new_job: NewJobFactory, tenant_id: str, **job: object) -> NewRequest:
    return NewRequest(
        kind="test.noop",
        input={"n": 1},
        caller_id="caller-1",
        job=new_job(tenant_id=tenant_id, **job),
        idempotency_key=None,
        http_request_id="req-1",
    )


async def test_a_job_is_found_by_its_own_tenant_and_by_an_operator_only(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job(tenant_id=A))
    own = await store.get_job(job_id, A)
    assert own is not None
    assert own.tenant_id == A
    assert await store.get_job(job_id, B) is None
    assert await store.get_job(job_id) == own


async def test_another_tenants_cancel_finds_nothing_and_changes_nothing(
    store: Store, new_job: NewJobFactory
) -> None:
    await enqueue_one(store, new_job(tenant_id=A))
    running = await claim_one(store)
    queued = await enqueue_one(store, new_job(tenant_id=A))
    assert await store.cancel(queued, B) is None
    assert await store.cancel(running.id, B) is None
    assert (await get(store, queued)).state is JobState.QUEUED
    after = await get(store, running.id)
    assert after.state is JobState.RUNNING
    assert not after.cancel_requested
    cancelled = await store.cancel(queued, A)
    assert cancelled is not None
    assert cancelled.state is JobState.CANCELLED


async def test_another_tenants_retry_finds_nothing_and_changes_nothing(
    store: Store, new_job: NewJobFactory
) -> None:
    await enqueue_one(store, new_job(tenant_id=A, max_attempts=1))
    job = await claim_one(store)
    assert await settle(store, "worker-1", failed(job)) == (True,)
    assert await store.retry(job.id, B) is None
    assert (await get(store, job.id)).state is JobState.FAILED
    again = await store.retry(job.id, A)
    assert again is not None
    assert again.state is JobState.QUEUED


async def test_statistics_for_a_tenant_count_its_jobs_only(
    store: Store, new_job: NewJobFactory
) -> None:
    for _ in range(3):
        await enqueue_one(store, new_job(tenant_id=A))
    await enqueue_one(store, new_job(tenant_id=B))
    await enqueue_one(store, new_job(tenant_id=B, delay_s=3600.0))
    assert await store.set_paused("default", True)

    def figures(stats: list[QueueStats]) -> tuple[int, int, bool]:
        (queue,) = [s for s in stats if s.name == "default"]
        return queue.counts[JobState.QUEUED], queue.scheduled, queue.paused

    assert figures(await store.queue_stats(tenant_id=A)) == (3, 0, True)
    assert figures(await store.queue_stats(tenant_id=B)) == (2, 1, True)
    assert figures(await store.queue_stats()) == (5, 1, True)
    # A tenant with no jobs still sees the queue and its setting, with nothing in it.
    assert figures(await store.queue_stats(False, "tenant-c")) == (0, 0, True)


async def test_requests_are_read_and_listed_by_their_own_tenant_only(
    store: Store, new_job: NewJobFactory
) -> None:
    mine = await store.create_request(_request(new_job, A))
    theirs = await store.create_request(_request(new_job, B))
    assert await store.get_request(mine.request.id, A) == mine.request
    assert await store.get_request(mine.request.id, B) is None
    listed = await store.list_requests(RequestFilter(tenant_id=B))
    assert [r.id for r in listed] == [theirs.request.id]
    jobs = await store.list_jobs(JobFilter(tenant_id=A))
    assert [j.id for j in jobs] == [mine.request.job.id]
    assert len(await store.list_jobs(JobFilter())) == 2


async def test_a_queue_position_counts_the_tenants_own_jobs_ahead(
    store: Store, new_job: NewJobFactory
) -> None:
    for _ in range(4):
        await store.create_request(_request(new_job, B))
    first = await store.create_request(_request(new_job, A))
    second = await store.create_request(_request(new_job, A))
    assert first.queue_position == 0
    assert second.queue_position == 1
    assert await store.queue_position(second.request.job) == 1


async def test_concurrent_requests_of_several_tenants_each_get_their_own_positions(
    store: Store, new_job: NewJobFactory
) -> None:
    # Submitted together, as a busy API does: the PostgreSQL store folds concurrent
    # plain requests into batches, one tenant's per batch.
    news = [_request(new_job, tenant) for tenant in (A, B) * 5]
    stored = await asyncio.gather(*(store.create_request(new) for new in news))
    for tenant in (A, B):
        mine = [s for s in stored if s.request.tenant_id == tenant]
        assert sorted(s.queue_position or 0 for s in mine) == [0, 1, 2, 3, 4]
        assert all(s.request.job.tenant_id == tenant for s in mine)
        listed = await store.list_requests(RequestFilter(tenant_id=tenant))
        assert {r.id for r in listed} == {s.request.id for s in mine}
