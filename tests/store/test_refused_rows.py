"""A job or request the database cannot hold is refused as DataRejected (a StoreError),
naming what was refused, and nothing of the call is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conveyor.store.base import DataRejected, Store, StoreError
from conveyor.store.records import JobFilter, NewJob, NewRequest
from conveyor.store.sqlite import SqliteStore

NewJobFactory = Callable[..., NewJob]


async def test_a_payload_that_is_not_json_is_refused_and_nothing_stored(
    store: Store, new_job: NewJobFactory
) -> None:
    for jobs in ([new_job(payload={"s": "\ud800"})], [new_job(), new_job(payload={1: "key"})]):
        with pytest.raises(DataRejected):
            await store.enqueue(jobs)
    assert await store.list_jobs(JobFilter()) == []


@pytest.mark.parametrize("count", [1, 2, 100], ids=["one", "batch", "bulk"])
async def test_a_value_out_of_its_columns_range_is_refused_on_every_enqueue_path(
    store: Store, new_job: NewJobFactory, count: int
) -> None:
    # 100 jobs go by COPY on PostgreSQL, whose binary encoder reports the range itself.
    jobs = [new_job() for _ in range(count - 1)] + [new_job(priority=40_000)]
    with pytest.raises(DataRejected):
        await store.enqueue(jobs)
    with pytest.raises(DataRejected):
        await store.enqueue_periodic(new_job(priority=40_000), 1.0)
    with pytest.raises(DataRejected):
        await store.create_request(NewRequest("test.noop", {}, "caller-1", jobs[-1]))
    assert await store.list_jobs(JobFilter()) == []


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


async def test_sqlite_a_row_its_constraints_refuse_is_refused_data(
    sqlite_store: SqliteStore, new_job: NewJobFactory
) -> None:
    with pytest.raises(DataRejected, match="CHECK constraint failed"):
        await sqlite_store.enqueue([new_job(priority=99)])
    with pytest.raises(DataRejected, match="OverflowError"):
        await sqlite_store.enqueue([new_job(max_attempts=2**64)])
    bad = NewRequest("test.noop", {"s": "\udfff"}, "caller-1", new_job())
    with pytest.raises(DataRejected):
        await sqlite_store.create_request(bad)
    assert await sqlite_store.list_jobs(JobFilter()) == []


def test_sqlite_urls_in_errors_never_show_a_password() -> None:
    with pytest.raises(StoreError) as caught:
        SqliteStore("sqlite://admin:hunter2@host/x.db")
    assert "hunter2" not in str(caught.value)
    assert "admin:***@host" in str(caught.value)
