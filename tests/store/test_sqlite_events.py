"""SQLite's event log: a store made with ``events=False`` writes none; another store on the
file hears what this one appended; ids are never reused, even by a store opened after the
newest events were pruned; an exchange writes its events in one statement; a reader of one
tenant's events walks the tenant's index."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from contract_support import (
    W1,
    NewJobFactory,
    claim,
    claim_one,
    completed,
    enqueue_one,
    failed,
    outcome_of,
    retried,
    settle,
    wait_until,
)

from conveyor.store.base import EventsAppended, LiveEvents, Notice
from conveyor.store.records import (
    Event,
    EventFilter,
    EventType,
    NewRequest,
    OutcomeKind,
)
from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlite.events import read_statement


@asynccontextmanager
async def opened(path: Path, *, events: bool = True) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(f"sqlite:///{path}", events=events)
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


def count_event_inserts(store: SqliteStore) -> Callable[[], int]:
    """Count, from now on, the statements of ``store``'s connection that insert events."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if "INSERT INTO conveyor_events" in sql:
            seen.append(sql)

    store._db.run_now(lambda: store._db.connection().set_trace_callback(trace))
    return lambda: len(seen)


async def test_a_store_made_without_events_writes_none(
    tmp_path: Path, new_job: NewJobFactory
) -> None:
    async with opened(tmp_path / "t.db", events=False) as store:
        heard: list[Notice] = []
        remove = store.add_listener(heard.append)
        try:
            await store.enqueue([new_job(), new_job(), new_job(max_attempts=1)])
            await store.create_request(
                NewRequest(kind="test.noop", input={}, caller_id="u1", job=new_job())
            )
            assert await store.enqueue_periodic(new_job(), 1_000.0) is not None
            a, b, c = (await claim(store, W1, {"default": 3})).claimed
            await settle(store, W1, completed(a), failed(b), retried(c, 0))
            await claim_one(store, lease_s=0.05)
            await asyncio.sleep(0.1)
            assert (await store.rescue()).total == 1
            assert await settle(
                store, W1, outcome_of(OutcomeKind.CANCELLED, await claim_one(store))
            )
            queued = await enqueue_one(store, new_job())
            await store.cancel(queued)
            await store.retry(queued)
            assert await store.advance_event_cursor("dispatch", None, 3, [new_job()])
            assert await store.event_cursor("dispatch") == 3
        finally:
            remove()
        assert (await store.read_events(EventFilter())).events == ()
        assert await store.last_event_id() == 0
        assert not any(isinstance(n, EventsAppended) for n in heard)


async def test_a_store_on_the_same_file_hears_events_appended(
    tmp_path: Path, new_job: NewJobFactory
) -> None:
    async with opened(tmp_path / "t.db") as writer, opened(tmp_path / "t.db") as reader:
        heard: list[Notice] = []
        remove = reader.add_listener(heard.append)
        try:
            job_id = await enqueue_one(writer, new_job())
            await wait_until(lambda: any(isinstance(n, EventsAppended) for n in heard), 5.0)
        finally:
            remove()
        [event] = (await reader.read_events(EventFilter())).events
        assert (event.type, event.job_id) == (EventType.QUEUED, job_id)


async def test_live_events_stay_in_their_process(tmp_path: Path) -> None:
    """Another store on the file (another process) never hears them: they are not stored."""
    async with opened(tmp_path / "t.db") as writer, opened(tmp_path / "t.db") as reader:
        heard: list[Notice] = []
        remove = reader.add_listener(heard.append)
        live = Event(None, "acme", EventType.STARTED, 1, "k", "default", 1, {"worker": W1}, 0.0)
        try:
            await writer.publish_live([live])
            await asyncio.sleep(0.2)
        finally:
            remove()
        assert not any(isinstance(n, LiveEvents) for n in heard)


async def test_ids_are_never_reused_after_every_event_was_pruned(
    tmp_path: Path, new_job: NewJobFactory
) -> None:
    async with opened(tmp_path / "t.db") as store:
        await store.enqueue([new_job() for _ in range(3)])
        last = await store.last_event_id()
        assert await store.prune_events(0.0) == 3
        assert await store.last_event_id() == last
    # A store opened later (another process, a restart) goes on from there too.
    async with opened(tmp_path / "t.db") as store:
        await enqueue_one(store, new_job())
        [event] = (await store.read_events(EventFilter())).events
        assert event.id == last + 1


async def test_prune_events_is_bounded_by_its_limit(tmp_path: Path, new_job: NewJobFactory) -> None:
    async with opened(tmp_path / "t.db") as store:
        await store.enqueue([new_job() for _ in range(5)])
        assert await store.prune_events(0.0, limit=2) == 2
        assert await store.prune_events(0.0, limit=2) == 2
        assert await store.prune_events(0.0, limit=2) == 1
        assert await store.prune_events(0.0, limit=2) == 0


async def test_an_exchange_writes_its_events_in_one_statement(
    tmp_path: Path, new_job: NewJobFactory
) -> None:
    async with opened(tmp_path / "t.db") as store:
        await store.enqueue([new_job(max_attempts=1) for _ in range(6)])
        jobs = (await claim(store, W1, {"default": 4})).claimed
        expired = (await claim(store, "worker-2", {"default": 2}, lease_s=0.05)).claimed
        await asyncio.sleep(0.1)
        inserts = count_event_inserts(store)
        outcomes = [completed(jobs[0]), failed(jobs[1]), retried(jobs[2], 60), completed(jobs[3])]
        await store.settle_and_claim(outcomes, [], W1, None, rescue=True)
        assert inserts() == 1
        written = (await store.read_events(EventFilter(after_id=6))).events
        # In the order of the outcomes, then the rescue's.
        assert [(e.job_id, e.type) for e in written] == [
            (jobs[0].id, EventType.COMPLETED),
            (jobs[1].id, EventType.FAILED),
            (jobs[2].id, EventType.RETRYING),
            (jobs[3].id, EventType.COMPLETED),
            *sorted((job.id, EventType.FAILED) for job in expired),
        ]


async def test_a_bulk_enqueue_writes_its_events_in_one_statement(
    tmp_path: Path, new_job: NewJobFactory
) -> None:
    async with opened(tmp_path / "t.db") as store:
        inserts = count_event_inserts(store)
        enqueued = await store.enqueue([new_job(priority=p) for p in (1, 2, 3)])
        assert inserts() == 1
        written = (await store.read_events(EventFilter())).events
        assert [(e.job_id, e.body["priority"]) for e in written] == [
            (enqueued[0].id, 1),
            (enqueued[1].id, 2),
            (enqueued[2].id, 3),
        ]


async def test_a_reader_of_one_tenant_walks_its_index(tmp_path: Path) -> None:
    async with opened(tmp_path / "t.db"):
        pass
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        sql, args = read_statement(EventFilter(after_id=5, tenant_id="acme"))
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
        [events_step] = [step for step in plan if step.startswith("SEARCH e ")]
        assert "conveyor_events_tenant (tenant_id=? AND id>?)" in events_step, plan
    finally:
        conn.close()
