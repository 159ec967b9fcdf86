"""The PostgreSQL store's event log beyond the contract: a store made with events off, the
notices of events and live events crossing to another store (and not echoed to the one
that sent them), live events split across several notices, the exchange's statements
free of NOTIFY, and the API's role reading one tenant's events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from conveyor.store.base import EventsAppended, JobsAvailable, LiveEvents, Notice, NoticesLost
from conveyor.store.postgres import PostgresStore
from conveyor.store.postgres.announcer import MAX_PAYLOAD, live_payloads
from conveyor.store.postgres.events import _SQL as EVENTS_SQL
from conveyor.store.postgres.exchange import _SQL as EXCHANGE_SQL
from conveyor.store.postgres.listener import LIVE_TAG
from conveyor.store.postgres.rows import decode_live, encode_live_event
from conveyor.store.records import (
    ClaimRequest,
    ErrorEntry,
    Event,
    EventFilter,
    EventType,
    NewJob,
    NewRequest,
    Outcome,
    OutcomeKind,
)
from pg_server import PgTestServer

StoreFactory = Callable[..., Awaitable[PostgresStore]]
"""The ``stores`` fixture (tests/store/conftest.py)."""

LISTENING = "(query ILIKE 'LISTEN%' OR query ILIKE 'SELECT pg_advisory_lock%')"
"""A store's LISTEN connection in pg_stat_activity (as in test_postgres_notify.py)."""

W = "worker-1"


def _job(tenant_id: str = "acme", queue: str = "default") -> NewJob:
    return NewJob(
        kind="t",
        queue=queue,
        payload={},
        priority=3,
        max_attempts=2,
        timeout_s=None,
        tenant_id=tenant_id,
    )


def _live(job_id: int, message: str = "half") -> Event:
    return Event(
        None,
        "acme",
        EventType.PROGRESS,
        job_id,
        "t",
        "default",
        1,
        {"fraction": 0.5, "message": message},
        time.time(),
    )


async def _wait_for(
    notices: list[Notice], predicate: Callable[[Notice], bool], within: float = 5.0
) -> None:
    deadline = time.monotonic() + within
    while not any(predicate(n) for n in notices):
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching notice within {within} s; got {notices}")
        await asyncio.sleep(0.005)


async def _listening(store: PostgresStore) -> list[Notice]:
    """The notices ``store``'s listeners hear from now on, once its LISTEN is up."""
    heard: list[Notice] = []
    store.add_listener(heard.append)
    await _wait_for(heard, lambda n: n == JobsAvailable(None))
    heard.clear()
    return heard


def _claim(slots: int = 10, lease_s: float = 30.0) -> ClaimRequest:
    return ClaimRequest(W, {"default": slots}, lease_s, kinds=("t",))


def _error() -> ErrorEntry:
    return ErrorEntry(at=time.time(), attempt=1, type="ValueError", message="boom", traceback="tb")


async def test_a_store_with_events_off_writes_none(stores: StoreFactory) -> None:
    store = await stores(events=False)
    heard: list[Notice] = []
    store.add_listener(heard.append)
    await store.enqueue([_job()])
    await store.enqueue([_job(), _job()])
    await store.enqueue([_job() for _ in range(100)])  # by COPY
    await store.create_request(NewRequest(kind="t", input={}, caller_id="u", job=_job()))
    assert await store.enqueue_periodic(_job(), 1_000.0) is not None
    claimed = (await store.settle_and_claim([], [], W, _claim(3))).claimed
    done, retried, failed = claimed
    outcomes = [
        Outcome(done.id, done.attempt, OutcomeKind.COMPLETED, "default", result={}),
        Outcome(retried.id, retried.attempt, OutcomeKind.RETRY, "default", error=_error()),
        Outcome(failed.id, failed.attempt, OutcomeKind.FAILED, "default", error=_error()),
    ]
    assert all((await store.settle_and_claim(outcomes, [], W, None)).applied)
    await store.retry(failed.id)
    queued = await store.enqueue([_job()])
    await store.cancel(queued[0].id)
    await store.settle_and_claim([], [], W, _claim(1, lease_s=0.01))
    await asyncio.sleep(0.05)
    assert (await store.rescue()).requeued
    assert await store.advance_event_cursor("dispatch", None, 5, [_job()])
    assert await store.last_event_id() == 0
    assert (await store.read_events(EventFilter())).events == ()
    # Its own listener heard of no event: only the LISTEN connection's coming up says
    # events may have been missed.
    await _wait_for(heard, lambda n: n == JobsAvailable(None))
    assert sum(isinstance(n, EventsAppended) for n in heard) == 1


async def test_changes_of_one_store_tell_another_of_their_events(stores: StoreFactory) -> None:
    listener_side = await stores()
    worker_side = await stores()
    heard = await _listening(listener_side)

    async def appended_by(change: Awaitable[object]) -> None:
        heard.clear()
        await change
        await _wait_for(heard, lambda n: isinstance(n, EventsAppended))

    await appended_by(worker_side.enqueue([_job()]))  # by the enqueue's own NOTIFY
    await worker_side.settle_and_claim([], [], W, _claim(1, lease_s=0.01))
    await asyncio.sleep(0.05)
    await appended_by(worker_side.rescue())  # a retry: LeaseExpired
    [job] = (await worker_side.settle_and_claim([], [], W, _claim(1))).claimed
    done = Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result={})
    await appended_by(worker_side.settle_and_claim([done], [], W, None))
    [other] = await worker_side.enqueue([_job(queue="other")])
    await appended_by(worker_side.cancel(other.id))
    await appended_by(worker_side.retry(other.id))
    events = (await listener_side.read_events(EventFilter())).events
    assert [(e.job_id, e.type) for e in events] == [
        (job.id, EventType.QUEUED),
        (job.id, EventType.RETRYING),
        (job.id, EventType.COMPLETED),
        (other.id, EventType.QUEUED),
        (other.id, EventType.CANCELLED),
        (other.id, EventType.QUEUED),
    ]


async def test_live_events_reach_another_store_once_and_not_back(stores: StoreFactory) -> None:
    sender = await stores()
    receiver = await stores()
    sent_back = await _listening(sender)
    heard = await _listening(receiver)
    live = [_live(7), _live(8, "almost")]
    await sender.publish_live(live)
    await _wait_for(heard, lambda n: isinstance(n, LiveEvents))
    assert [n.events for n in heard if isinstance(n, LiveEvents)] == [tuple(live)]
    assert await sender.last_event_id() == 0  # never stored
    # The receiver's enqueue is heard after the sender's own NOTIFY came back, had it been
    # delivered: its listeners heard the live events once, when they were published.
    await receiver.enqueue([_job()])
    await _wait_for(sent_back, lambda n: n == JobsAvailable(frozenset({"default"})))
    assert [n.events for n in sent_back if isinstance(n, LiveEvents)] == [tuple(live)]


async def test_many_live_events_go_in_several_notices_under_the_limit(
    stores: StoreFactory,
) -> None:
    sender = await stores()
    receiver = await stores()
    heard = await _listening(receiver)
    live = [_live(i, "x" * 300) for i in range(100)]
    await sender.publish_live(live)

    def got() -> list[Event]:
        return [e for n in heard if isinstance(n, LiveEvents) for e in n.events]

    await _wait_for(heard, lambda n: len(got()) == len(live))
    notices = [n for n in heard if isinstance(n, LiveEvents)]
    # About 400 bytes each: a notice holds some twenty.
    assert 3 <= len(notices) <= 10
    assert got() == live


def test_live_payloads_stay_under_the_limit_and_decode_in_order() -> None:
    live = [_live(i, "y" * (i * 37 % 900)) for i in range(200)]
    payloads = live_payloads(encode_live_event(e) for e in live)
    assert len(payloads) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD for p in payloads)
    assert all(p.startswith(LIVE_TAG) for p in payloads)
    decoded = [e for p in payloads for e in decode_live(p[len(LIVE_TAG) :]).events]
    assert decoded == live
    # Compact: an array per event, no field names.
    assert orjson.loads(payloads[0][len(LIVE_TAG) :])[0][:3] == ["acme", "job.progress", 0]


async def test_a_live_event_too_large_for_a_notice_stays_in_this_process(
    stores: StoreFactory,
) -> None:
    sender = await stores()
    receiver = await stores()
    heard = await _listening(receiver)
    here = await _listening(sender)
    big, small = _live(1, "z" * MAX_PAYLOAD), _live(2)
    await sender.publish_live([big, small])
    assert [n.events for n in here if isinstance(n, LiveEvents)] == [(big, small)]
    await _wait_for(heard, lambda n: isinstance(n, LiveEvents))
    assert [n.events for n in heard if isinstance(n, LiveEvents)] == [(small,)]


def test_the_exchange_s_statements_send_no_notify() -> None:
    """A NOTIFY in the exchange's transaction would take the cluster's notify lock at every
    worker's commit, through its WAL flush: the store sends the notice after the commit."""
    assert EXCHANGE_SQL
    for name, stmt in EXCHANGE_SQL.items():
        code = "\n".join(line.split("--", 1)[0] for line in stmt.sql.splitlines())
        assert "notify" not in code.lower(), name


async def test_the_api_role_reads_its_tenant_s_events_and_the_operator_all(
    stores: StoreFactory, pg: PgTestServer
) -> None:
    await stores()  # migrated: the API's role exists
    api = PostgresStore(pg.url, role="auto")
    await api.open()
    try:
        assert api.role == "conveyor_api"
        a = await api.create_request(NewRequest(kind="t", input={}, caller_id="u", job=_job("a")))
        b = await api.create_request(NewRequest(kind="t", input={}, caller_id="u", job=_job("b")))
        await api.cancel(b.request.job.id, "b")
        own = (await api.read_events(EventFilter(tenant_id="a"))).events
        assert [(e.tenant_id, e.request_id) for e in own] == [("a", a.request.id)]
        every = (await api.read_events(EventFilter())).events
        assert [(e.tenant_id, e.type) for e in every] == [
            ("a", EventType.QUEUED),
            ("b", EventType.QUEUED),
            ("b", EventType.CANCELLED),
        ]
        assert await api.advance_event_cursor("dispatch", None, every[-1].id or 0, [_job("a")])
        assert await api.event_cursor("dispatch") == every[-1].id
    finally:
        await api.close()


async def test_live_events_published_in_a_row_go_in_one_notice(stores: StoreFactory) -> None:
    """Coalesced: what is published while a notice is being sent goes in the next one,
    never one NOTIFY per event."""
    sender = await stores()
    receiver = await stores()
    heard = await _listening(receiver)
    live = [_live(i) for i in range(20)]
    for event in live:
        await sender.publish_live([event])
    await _wait_for(heard, lambda n: isinstance(n, LiveEvents))
    assert [n.events for n in heard if isinstance(n, LiveEvents)] == [tuple(live)]


async def test_a_listener_back_after_its_connection_dropped_hears_events_appended(
    stores: StoreFactory, pg: PgTestServer
) -> None:
    store = await stores()
    heard = await _listening(store)
    admin = await asyncpg.connect(pg.url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND " + LISTENING
        )
    finally:
        await admin.close()
    assert killed == 1
    await _wait_for(heard, lambda n: isinstance(n, NoticesLost))
    assert any(isinstance(n, EventsAppended) for n in heard)


async def _plan(conn: asyncpg.Connection, name: str, **literals: str) -> dict[str, Any]:
    """The generic plan (the stores' session setting) of events.sql's ``name`` run with
    its parameters as SQL ``literals``, in a transaction rolled back."""
    stmt = EVENTS_SQL[name]
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE planned AS {stmt.sql}")
        doc = await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE planned({', '.join(stmt.args(literals))})"
        )
        await conn.execute("DEALLOCATE planned")
    plan: dict[str, Any] = orjson.loads(doc)[0]["Plan"]
    return plan


def _event_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if node.get("Relation Name") == "conveyor_events" else []
    for child in node.get("Plans", []):
        found.extend(_event_scans(child))
    return found


async def test_reads_and_prunes_walk_an_index_for_what_they_return(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    """A small tenant's stream behind fifty larger ones' events, the newest events of all,
    and a prune of the oldest: each reads about what it returns, through an index."""
    await stores()
    await db.execute(
        "INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt) "
        "SELECT CASE WHEN i % 1000 = 0 THEN 'small' ELSE 'big' || i % 50 END, "
        "'job.queued', i, 't', 'default', 0 FROM generate_series(1, 20000) AS i"
    )
    await db.execute("ANALYZE conveyor_events")
    filters = {"through_id": "NULL", "job_id": "NULL", "kinds": "'{}'", "types": "'{}'"}
    small = await _plan(
        db, "read_events_of_tenant", after_id="0", tenant_id="'small'", limit="100", **filters
    )
    newest = await _plan(db, "read_events", after_id="19990", limit="100", **filters)
    await db.execute(
        "UPDATE conveyor_events SET created_at = now() - interval '2 hours' WHERE id <= 300"
    )
    prune = await _plan(db, "prune_events", older_than_s="3600", limit="500")
    for plan, index, most in (
        (small, "conveyor_events_tenant", 20),
        (newest, "conveyor_events_pkey", 10),
        # The batch looked at, and the old events in it deleted by id.
        (prune, "conveyor_events_pkey", 500 + 300),
    ):
        scans = [n for n in _event_scans(plan) if n["Node Type"] != "ModifyTable"]
        assert scans
        for scan in scans:
            # A bitmap scan names its index on the node below it.
            by = scan if "Index Name" in scan else scan["Plans"][0]
            assert by["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
            assert by["Index Name"] == index, scan
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= most
