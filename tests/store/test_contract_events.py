"""The store contract, the event log: what each change writes, in the change's transaction;
reading it back with filters; live events; notices; pruning; the consumers' cursors.

Every store kind must pass it (see test_contract_outcomes.py for the rules of the suite).
"""

from __future__ import annotations

import asyncio
import time

import pytest
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

from conveyor.store.base import (
    DataRejected,
    EventsAppended,
    LiveEvents,
    Notice,
    Store,
)
from conveyor.store.records import (
    Event,
    EventFilter,
    EventType,
    NewRequest,
    OutcomeKind,
    Progress,
)


async def events_of(store: Store, **filters: object) -> list[Event]:
    page = await store.read_events(EventFilter(**filters))  # type: ignore[arg-type]
    return list(page.events)


async def types_of(store: Store, job_id: int) -> list[EventType]:
    return [e.type for e in await events_of(store, job_id=job_id)]


# -- what each change writes ---------------------------------------------------------------
async def test_an_enqueue_writes_job_queued(store: Store, new_job: NewJobFactory) -> None:
    before = time.time()
    job_id = await enqueue_one(store, new_job(tenant_id="acme", priority=1, queue="default"))
    [event] = await events_of(store)
    assert event.id is not None
    assert event.id > 0
    assert (event.type, event.job_id, event.tenant_id) == (EventType.QUEUED, job_id, "acme")
    assert (event.kind, event.queue, event.attempt) == ("test.noop", "default", 0)
    assert event.body["priority"] == 1
    assert isinstance(event.body["run_at"], float)
    assert event.request_id is None
    assert before - 1 <= event.at <= time.time() + 1


async def test_a_request_writes_job_queued_with_its_request_id(
    store: Store, new_job: NewJobFactory
) -> None:
    stored = await store.create_request(
        NewRequest(kind="test.noop", input={}, caller_id="u1", job=new_job())
    )
    [event] = await events_of(store)
    assert event.type is EventType.QUEUED
    assert event.job_id == stored.request.job.id
    assert event.request_id == stored.request.id


async def test_a_bulk_enqueue_writes_one_event_per_new_job_in_order(
    store: Store, new_job: NewJobFactory
) -> None:
    jobs = [new_job(unique_key="same"), new_job(unique_key="same"), new_job()]
    enqueued = await store.enqueue(jobs)
    events = await events_of(store)
    # The second resolved to the first: it was not queued again.
    assert [e.job_id for e in events] == [enqueued[0].id, enqueued[2].id]
    assert [e.id for e in events] == sorted(e.id for e in events if e.id is not None)


async def test_outcomes_write_completed_failed_retrying(
    store: Store, new_job: NewJobFactory
) -> None:
    ids = [await enqueue_one(store, new_job(max_attempts=2)) for _ in range(3)]
    a, b, c = (await claim(store, W1, {"default": 3})).claimed
    assert await settle(store, W1, completed(a, {"big": "x" * 10}), failed(b), retried(c, 60))
    by_job = {e.job_id: e for e in await events_of(store, after_id=0) if e.type.durable}
    assert by_job[ids[0]].type is EventType.COMPLETED
    assert by_job[ids[0]].attempt == 1
    assert by_job[ids[0]].body == {}
    assert by_job[ids[1]].type is EventType.FAILED
    assert by_job[ids[1]].body["error"] == {"type": "ValueError", "message": "boom"}
    assert by_job[ids[2]].type is EventType.RETRYING
    assert by_job[ids[2]].body["error"]["type"] == "ValueError"
    assert "traceback" not in by_job[ids[2]].body["error"]
    assert by_job[ids[2]].body["run_at"] > time.time() + 30


async def test_a_job_s_events_are_in_the_order_of_its_changes(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=2))
    job = await claim_one(store)
    await settle(store, W1, retried(job, 0))
    job = await claim_one(store)
    await settle(store, W1, completed(job))
    assert await types_of(store, job_id) == [
        EventType.QUEUED,
        EventType.RETRYING,
        EventType.COMPLETED,
    ]
    attempts = [e.attempt for e in await events_of(store, job_id=job_id)]
    assert attempts == [0, 1, 2]


async def test_claims_progress_and_releases_write_no_event(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.settle_and_claim([], [Progress(job.id, job.attempt, 0.5, "half")], W1, None)
    await settle(store, W1, outcome_of(OutcomeKind.RELEASED, job))
    assert await types_of(store, job_id) == [EventType.QUEUED]


async def test_cancel_and_retry_write_their_events(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job(tenant_id="acme"))
    await store.cancel(job_id, "acme")
    await store.retry(job_id, "acme")
    assert await types_of(store, job_id) == [
        EventType.QUEUED,
        EventType.CANCELLED,
        EventType.QUEUED,
    ]


async def test_a_cancel_of_a_running_job_writes_cancelled_when_it_stops(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.cancel(job_id)
    # Asked, not done: the worker has not stopped it yet.
    assert await types_of(store, job_id) == [EventType.QUEUED]
    await settle(store, W1, outcome_of(OutcomeKind.CANCELLED, job))
    assert await types_of(store, job_id) == [EventType.QUEUED, EventType.CANCELLED]


async def test_the_rescuer_writes_retrying_and_failed(store: Store, new_job: NewJobFactory) -> None:
    again = await enqueue_one(store, new_job(max_attempts=2))
    last = await enqueue_one(store, new_job(max_attempts=1))
    await claim(store, W1, {"default": 2}, lease_s=0.05)
    await asyncio.sleep(0.1)
    await store.rescue()
    [retrying] = [e for e in await events_of(store, job_id=again) if e.id and e.attempt == 1]
    assert retrying.type is EventType.RETRYING
    assert retrying.body["error"]["type"] == "LeaseExpired"
    assert await types_of(store, last) == [EventType.QUEUED, EventType.FAILED]


async def test_the_exchange_s_rescue_writes_events_too(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=1))
    await claim_one(store, lease_s=0.05)
    await asyncio.sleep(0.1)
    await store.settle_and_claim([], [], "worker-2", None, rescue=True)
    assert await types_of(store, job_id) == [EventType.QUEUED, EventType.FAILED]


async def test_an_exchange_the_database_refuses_writes_no_event(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(), new_job()])
    good, bad = (await claim(store, W1, {"default": 2})).claimed
    before = await store.last_event_id()
    with pytest.raises(DataRejected):
        await settle(store, W1, completed(good), failed(bad, "\ud800"))
    assert await store.last_event_id() == before


async def test_a_periodic_tick_writes_job_queued(store: Store, new_job: NewJobFactory) -> None:
    enqueued = await store.enqueue_periodic(new_job(), 1_000.0)
    assert enqueued is not None
    assert await types_of(store, enqueued.id) == [EventType.QUEUED]
    assert await store.enqueue_periodic(new_job(), 1_000.0) is None
    assert len(await events_of(store)) == 1


async def test_an_enqueue_resolved_to_an_earlier_job_writes_no_event(
    store: Store, new_job: NewJobFactory
) -> None:
    first = await enqueue_one(store, new_job(unique_key="once"))
    [again] = await store.enqueue([new_job(unique_key="once")])
    assert (again.id, again.created) == (first, False)
    request = NewRequest(
        kind="test.noop", input={}, caller_id="u1", job=new_job(), idempotency_key="k1"
    )
    created = await store.create_request(request)
    assert not (await store.create_request(request)).created
    assert [e.job_id for e in await events_of(store)] == [first, created.request.job.id]


# -- reading ----------------------------------------------------------------------------------
async def test_filters(store: Store, new_job: NewJobFactory) -> None:
    a = await enqueue_one(store, new_job(tenant_id="a", kind="k.one"))
    b = await enqueue_one(store, new_job(tenant_id="b", kind="k.two"))
    c = await enqueue_one(store, new_job(tenant_id="a", kind="k.two"))
    await store.cancel(c)
    all_events = await events_of(store)
    assert [e.job_id for e in all_events] == [a, b, c, c]
    assert [e.job_id for e in await events_of(store, tenant_id="a")] == [a, c, c]
    assert [e.job_id for e in await events_of(store, tenant_id="b")] == [b]
    assert [e.job_id for e in await events_of(store, kinds=("k.two",))] == [b, c, c]
    cancelled = await events_of(store, types=(EventType.CANCELLED,))
    assert [e.job_id for e in cancelled] == [c]
    assert [e.job_id for e in await events_of(store, job_id=c, tenant_id="b")] == []
    ids = [e.id for e in all_events]
    assert [e.id for e in await events_of(store, after_id=ids[1])] == ids[2:]
    assert [e.id for e in await events_of(store, through_id=ids[1])] == ids[:2]
    assert [e.id for e in await events_of(store, limit=3)] == ids[:3]
    assert await store.last_event_id() == ids[-1]


async def test_an_empty_log(store: Store) -> None:
    page = await store.read_events(EventFilter())
    assert page.events == ()
    assert await store.last_event_id() == 0
    oldest_running, next_xid = page.horizon
    assert isinstance(oldest_running, int)
    assert isinstance(next_xid, int)


async def test_a_later_page_s_horizon_passes_an_earlier_one(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    """Once the transactions running at one read have ended, a later read's oldest running
    transaction is at or past the first's next. (PostgreSQL's horizon is the server's:
    another database's session may hold a transaction open for a while, so the later
    read is tried again until then.)"""
    first = await store.read_events(EventFilter())
    await peer_store.enqueue([new_job()])
    deadline = time.monotonic() + 10
    while True:
        later = await store.read_events(EventFilter())
        if later.horizon[0] >= first.horizon[1] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert later.horizon[0] >= first.horizon[1]
    assert len(later.events) == 1


async def test_prune_events_removes_only_old_ones(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job())
    await asyncio.sleep(0.3)
    kept = await enqueue_one(store, new_job())
    assert await store.prune_events(0.2) == 1
    assert [e.job_id for e in await events_of(store)] == [kept]
    assert await store.prune_events(3600) == 0
    # The ids go on from where they were, even once the newest is pruned.
    last = await store.last_event_id()
    assert await store.prune_events(0.0) == 1
    await enqueue_one(store, new_job())
    [event] = await events_of(store)
    assert event.id is not None
    assert event.id > last


# -- notices ----------------------------------------------------------------------------------
async def test_listeners_hear_events_appended_from_this_store_and_another(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    heard: list[Notice] = []
    remove = store.add_listener(heard.append)
    try:
        await store.enqueue([new_job()])
        await wait_until(lambda: any(isinstance(n, EventsAppended) for n in heard), 1.0)
        heard.clear()
        job = await claim_one(peer_store)
        await settle(peer_store, W1, completed(job))
        await wait_until(lambda: any(isinstance(n, EventsAppended) for n in heard), 5.0)
    finally:
        remove()


async def test_live_events_reach_this_store_s_listeners(store: Store) -> None:
    heard: list[Notice] = []
    remove = store.add_listener(heard.append)
    live = Event(
        None, "acme", EventType.PROGRESS, 7, "k", "default", 1, {"fraction": 0.5}, time.time()
    )
    try:
        await store.publish_live([live])
        await wait_until(lambda: any(isinstance(n, LiveEvents) for n in heard), 1.0)
        [notice] = [n for n in heard if isinstance(n, LiveEvents)]
        assert notice.events == (live,)
    finally:
        remove()
    assert await store.last_event_id() == 0


# -- the consumers' cursors ------------------------------------------------------------------
async def test_an_event_cursor_moves_once_from_where_it_was(
    store: Store, new_job: NewJobFactory
) -> None:
    assert await store.event_cursor("dispatch") is None
    assert await store.advance_event_cursor("dispatch", None, 5, [new_job(kind="d.one")])
    assert await store.event_cursor("dispatch") == 5
    # Another consumer that read the cursor before the move loses, and enqueues nothing.
    assert not await store.advance_event_cursor("dispatch", None, 9, [new_job(kind="d.two")])
    assert not await store.advance_event_cursor("dispatch", 4, 9, [new_job(kind="d.two")])
    assert await store.advance_event_cursor("dispatch", 5, 9, [new_job(kind="d.three")])
    assert await store.event_cursor("dispatch") == 9
    assert await store.event_cursor("other") is None
    kinds = [e.kind for e in await events_of(store, types=(EventType.QUEUED,))]
    assert kinds == ["d.one", "d.three"]
