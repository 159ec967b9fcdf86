"""PostgreSQL handoff: a claim that comes back short offers its free slots, and a single
enqueue that finds a live offer inserts its job already running under that worker and
hands it over in its NOTIFY.

Each store instance stands for a process of its own (its own pool and LISTEN
connection). Offers are read from ``conveyor_offers`` directly; the only waits are for
notices, with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from conveyor.store.base import JobHandedOff, JobsAvailable, Notice, Offers
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import (
    ClaimRequest,
    Job,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
    SettleResult,
    WorkerInfo,
)

StoreFactory = Callable[..., Awaitable[PostgresStore]]
"""The ``stores`` fixture (tests/store/conftest.py)."""

W = "worker-1"
W2 = "worker-2"

INSERT_QUEUED = (
    "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
    "max_attempts, run_at, created_at) "
    "VALUES ('default', 'q', 't', 5, 'queued', '{}', 3, now() + make_interval(secs => $1), "
    "now()) RETURNING id"
)
"""A queued job of queue q, due in $1 seconds, written behind the stores' backs."""


def _job(queue: str = "q", **fields: Any) -> NewJob:
    return NewJob(
        **{
            "kind": "t",
            "queue": queue,
            "payload": {},
            "priority": 3,
            "max_attempts": 3,
            "timeout_s": None,
            **fields,
        }
    )


async def _wait_for(notices: list[Notice], predicate: Callable[[Notice], bool]) -> Notice:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for notice in notices:
            if predicate(notice):
                return notice
        await asyncio.sleep(0.005)
    raise AssertionError(f"no matching notice within 5 s; got {notices}")


async def _listening(stores: StoreFactory) -> tuple[PostgresStore, list[Notice]]:
    """A store whose LISTEN connection is up (and holds its offer key), and the notices
    its listener receives."""
    store = await stores()
    notices: list[Notice] = []
    store.add_listener(notices.append)
    await _wait_for(notices, lambda n: n == JobsAvailable(None))
    assert store._listener.offer_key is not None
    return store, notices


async def _claim(
    store: PostgresStore,
    slots: dict[str, int],
    worker_id: str = W,
    kinds: tuple[str, ...] = ("t",),
    **kwargs: Any,
) -> SettleResult:
    """A claim of jobs of ``kinds`` that offers what it leaves free."""
    request = ClaimRequest(worker_id, slots, 30.0, kinds=kinds)
    return await store.settle_and_claim([], [], worker_id, request, offers=Offers(**kwargs))


async def _offers(db: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Free slots on offer, by (queue, worker)."""
    rows = await db.fetch("SELECT queue, worker_id, slots FROM conveyor_offers")
    return {(r["queue"], r["worker_id"]): r["slots"] for r in rows}


async def _get(store: PostgresStore, job_id: int) -> Job:
    job = await store.get_job(job_id)
    assert job is not None, f"job {job_id} is missing"
    return job


async def _enqueue_one(store: PostgresStore, job: NewJob) -> int:
    [enqueued] = await store.enqueue([job])
    assert enqueued.created
    return enqueued.id


async def _kill_listen(db: asyncpg.Connection, store: PostgresStore) -> None:
    """Terminate the backend of ``store``'s LISTEN connection (the holder of its offer
    key's advisory lock) and return once it is gone, its lock with it."""
    pid = await db.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND ((classid::bigint << 32) | objid::bigint) = $1",
        store._listener.offer_key,
    )
    assert pid is not None, "no backend holds the store's offer key"
    assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)


def _handoffs(notices: list[Notice]) -> list[JobHandedOff]:
    return [n for n in notices if isinstance(n, JobHandedOff)]


# -- offers ----------------------------------------------------------------------------------
async def test_a_short_claim_offers_the_slots_it_left_free(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    store, _ = await _listening(stores)
    job_id = await _enqueue_one(store, _job())

    result = await _claim(store, {"q": 3})

    assert [j.id for j in result.claimed] == [job_id]
    assert result.offered == frozenset({"q"})
    row = await db.fetchrow("SELECT * FROM conveyor_offers")
    assert dict(row) == {
        "queue": "q",
        "worker_id": W,
        "slots": 2,
        "lock_key": store._listener.offer_key,
        "lease_s": 30.0,
        "kinds": ["t"],
    }


async def test_a_claim_that_fills_its_slots_offers_nothing_and_takes_its_offer_back(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    store, _ = await _listening(stores)
    await store.enqueue([_job(), _job()])
    filled = await _claim(store, {"q": 2})
    assert (len(filled.claimed), filled.offered) == (2, frozenset())
    assert await _offers(db) == {}

    # An offer, then a claim that fills every slot: the offer is gone.
    assert (await _claim(store, {"q": 2})).offered == frozenset({"q"})
    await store.enqueue([_job(), _job()])
    refilled = await _claim(store, {"q": 2})
    assert (len(refilled.claimed), refilled.offered) == (2, frozenset())
    assert await _offers(db) == {}


@pytest.mark.parametrize("listen", [True, False], ids=["listener never added", "listen=False"])
async def test_no_offer_without_a_listen_connection(
    stores: StoreFactory, db: asyncpg.Connection, listen: bool
) -> None:
    """An offer promises a notice to a LISTEN connection: without one there is nothing to
    hand over through."""
    store = await stores(listen=listen)
    if not listen:
        store.add_listener(lambda notice: None)  # opens no LISTEN connection
    assert store._listener.offer_key is None

    result = await _claim(store, {"q": 3})

    assert result.offered == frozenset()
    assert await _offers(db) == {}


@pytest.mark.parametrize("setting", ["paused", "limited"])
async def test_no_offer_in_a_paused_or_limited_queue(
    stores: StoreFactory, db: asyncpg.Connection, setting: str
) -> None:
    store, _ = await _listening(stores)
    # The queue must exist to take a setting: the worker about to claim serves it.
    await store.register_worker(WorkerInfo(W, "host", 1, {"q": 3, "r": 3}), 30.0)
    if setting == "paused":
        assert await store.set_paused("q", True)
    else:
        assert await store.set_queue_limit("q", 5)

    result = await _claim(store, {"q": 3, "r": 3})

    assert result.offered == frozenset({"r"})
    assert await _offers(db) == {("r", W): 3}


# -- handing off -----------------------------------------------------------------------------
async def test_a_single_enqueue_is_handed_to_the_offering_worker(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    worker_side, worker_notices = await _listening(stores)
    client_side, client_notices = await _listening(stores)
    await _claim(worker_side, {"q": 2})
    worker_notices.clear()
    client_notices.clear()

    job_id = await _enqueue_one(
        client_side,
        _job(payload={"n": 1, "s": "é"}, meta={"request_id": "r-1"}, tenant_id="acme", priority=2),
    )

    stored = await _get(client_side, job_id)
    assert (stored.state, stored.attempt, stored.locked_by) == (JobState.RUNNING, 1, W)
    # Inserted running: started in the statement that created it.
    assert stored.started_at == stored.created_at
    assert stored.lease_expires_at == pytest.approx(stored.created_at + 30.0, abs=1e-3)
    assert await _offers(db) == {("q", W): 1}
    # The notice carries the whole job, to every listening store: the worker's...
    handoff = await _wait_for(worker_notices, lambda n: isinstance(n, JobHandedOff))
    assert handoff == JobHandedOff(W, job_id, 1, stored)
    # ...and the enqueuer's own (a handoff is never taken for an echo).
    assert await _wait_for(client_notices, lambda n: isinstance(n, JobHandedOff)) == handoff
    # A handed-off job wakes no claimer: no 'q' notice in its transaction, no local one.
    everything = worker_notices + client_notices
    assert not [n for n in everything if isinstance(n, JobsAvailable)], everything


async def test_handoffs_stop_when_the_offered_slots_run_out(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    worker_side, notices = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 2})

    ids = [await _enqueue_one(client_side, _job()) for _ in range(3)]

    jobs = [await _get(client_side, job_id) for job_id in ids]
    assert [(j.state, j.locked_by) for j in jobs] == [
        (JobState.RUNNING, W),
        (JobState.RUNNING, W),
        (JobState.QUEUED, None),
    ]
    assert await _offers(db) == {("q", W): 0}
    await _wait_for(notices, lambda n: n == JobsAvailable(frozenset({"q"})))
    assert sorted(n.job_id for n in _handoffs(notices)) == ids[:2]


async def test_a_due_job_waiting_in_the_queue_is_never_overtaken(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    """Strict priority: a job may skip the queue only when nothing due waits in it, even
    when it has the higher priority. A job that is not due yet does not count."""
    worker_side, _ = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 2})
    await db.fetchval(INSERT_QUEUED, 3600.0)

    after_scheduled = await _get(client_side, await _enqueue_one(client_side, _job()))
    assert (after_scheduled.state, after_scheduled.locked_by) == (JobState.RUNNING, W)

    await db.fetchval(INSERT_QUEUED, 0.0)
    after_due = await _get(client_side, await _enqueue_one(client_side, _job(priority=1)))
    assert (after_due.state, after_due.attempt) == (JobState.QUEUED, 0)
    assert await _offers(db) == {("q", W): 1}


async def test_a_job_is_handed_only_to_a_worker_that_runs_its_kind(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    thumbs, _ = await _listening(stores)
    reports, _ = await _listening(stores)
    client_side = await stores()
    await _claim(thumbs, {"q": 3}, W, kinds=("media.thumbnail",))
    await _claim(reports, {"q": 1}, W2, kinds=("media.report",))

    report = await _get(client_side, await _enqueue_one(client_side, _job(kind="media.report")))
    thumb = await _get(client_side, await _enqueue_one(client_side, _job(kind="media.thumbnail")))
    other = await _get(client_side, await _enqueue_one(client_side, _job(kind="video.process")))

    # The offer with the most slots (W's) does not run media.report: W2 gets it.
    assert (report.state, report.locked_by) == (JobState.RUNNING, W2)
    assert (thumb.state, thumb.locked_by) == (JobState.RUNNING, W)
    # Nobody runs video.process: it waits, queued, uncharged.
    assert (other.state, other.attempt, other.locked_by) == (JobState.QUEUED, 0, None)
    assert await _offers(db) == {("q", W): 2, ("q", W2): 0}


async def test_jobs_nobody_runs_do_not_stop_handoffs(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    """The queue holds due jobs, but of a kind the offering worker does not run: they
    could never be claimed before the new job by it, so the job is handed off. A due job
    of a kind it runs still comes first."""
    worker_side, _ = await _listening(stores)
    client_side = await stores()
    await client_side.enqueue([_job(kind="nobody.runs", priority=1) for _ in range(100)])
    await _claim(worker_side, {"q": 2}, kinds=("t",))

    handed = await _get(client_side, await _enqueue_one(client_side, _job()))
    assert (handed.state, handed.locked_by) == (JobState.RUNNING, W)

    await db.fetchval(INSERT_QUEUED, 0.0)  # kind t, due
    behind = await _get(client_side, await _enqueue_one(client_side, _job(priority=1)))
    assert (behind.state, behind.attempt) == (JobState.QUEUED, 0)


@pytest.mark.parametrize(
    ("setting", "jobs"),
    [
        pytest.param(None, [_job(delay_s=30.0)], id="delayed"),
        pytest.param(None, [_job(run_at=time.time() + 3600)], id="scheduled"),
        pytest.param(None, [_job(), _job()], id="batch of 2"),
        # Written behind the store's back, where set_paused and set_queue_limit would
        # also drop the offer: the enqueue's own check is what is tested.
        pytest.param("paused", [_job()], id="paused queue"),
        pytest.param("limited", [_job()], id="limited queue"),
    ],
)
async def test_jobs_that_are_not_handed_off(
    stores: StoreFactory,
    db: asyncpg.Connection,
    setting: str | None,
    jobs: list[NewJob],
) -> None:
    worker_side, notices = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 2})
    if setting is not None:
        await db.execute(
            "INSERT INTO conveyor_queues (name, paused, concurrency_limit, updated_at) "
            "VALUES ('q', $1, $2, now())",
            setting == "paused",
            5 if setting == "limited" else None,
        )

    enqueued = await client_side.enqueue(jobs)

    stored = [await _get(client_side, e.id) for e in enqueued]
    assert [(j.state, j.attempt, j.locked_by) for j in stored] == [
        (JobState.QUEUED, 0, None)
    ] * len(jobs)
    assert await _offers(db) == {("q", W): 2}
    # The queue's notice came, and no handoff notice with it (same transaction).
    await _wait_for(notices, lambda n: n == JobsAvailable(frozenset({"q"})))
    assert _handoffs(notices) == []


async def test_a_unique_key_conflict_consumes_no_slot(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    worker_side, _ = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 2})
    [first] = await client_side.enqueue([_job(unique_key="k")])
    assert (await _get(client_side, first.id)).locked_by == W

    [again] = await client_side.enqueue([_job(unique_key="k")])

    assert (again.id, again.created) == (first.id, False)
    assert await db.fetchval("SELECT count(*) FROM conveyor_jobs") == 1
    assert await _offers(db) == {("q", W): 1}


async def test_no_handoff_to_an_offer_whose_listen_connection_is_gone(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    """Its notice would be lost: the enqueue finds the offer's key unlocked and queues
    the job. A rescue pass of another worker then deletes the dead offer, and only it."""
    worker_side, _ = await _listening(stores)
    other_side, _ = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 2})
    await _claim(other_side, {"r": 1}, worker_id=W2)

    await _kill_listen(db, worker_side)
    job = await _get(client_side, await _enqueue_one(client_side, _job()))

    assert (job.state, job.attempt, job.locked_by) == (JobState.QUEUED, 0, None)
    assert await _offers(db) == {("q", W): 2, ("r", W2): 1}
    await client_side.settle_and_claim([], [], "rescuer", None, rescue=True)
    assert await _offers(db) == {("r", W2): 1}


async def test_a_job_too_large_for_a_notice_is_handed_off_by_id(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    worker_side, notices = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 1})

    job_id = await _enqueue_one(client_side, _job(payload={"blob": "x" * 10_000}))

    handoff = await _wait_for(notices, lambda n: isinstance(n, JobHandedOff))
    assert handoff == JobHandedOff(W, job_id, 1, None)
    stored = await _get(client_side, job_id)
    assert (stored.state, stored.locked_by) == (JobState.RUNNING, W)
    assert stored.payload == {"blob": "x" * 10_000}


# -- keeping offers in step ------------------------------------------------------------------
async def test_freed_slots_are_added_to_the_offers_of_queues_not_claimed(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    store, _ = await _listening(stores)
    await _claim(store, {"q": 2, "r": 1})

    # No offer in "s": freed slots there create none.
    await store.settle_and_claim([], [], W, None, offers=Offers(freed={"q": 3, "s": 4}))
    assert await _offers(db) == {("q", W): 5, ("r", W): 1}

    # A claimed queue's offer is what that claim leaves free; its freed slots are ignored.
    await _claim(store, {"r": 2}, freed={"q": 1, "r": 7})
    assert await _offers(db) == {("q", W): 6, ("r", W): 2}


async def test_withdraw_takes_back_every_offer_of_the_worker(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    store, _ = await _listening(stores)
    await _claim(store, {"q": 2, "r": 1})
    await _claim(store, {"q": 1}, worker_id=W2)

    await store.settle_and_claim([], [], W, None, offers=Offers(withdraw=True))

    assert await _offers(db) == {("q", W2): 1}


async def test_unregistering_a_worker_deletes_its_offers(
    stores: StoreFactory, db: asyncpg.Connection
) -> None:
    store, _ = await _listening(stores)
    await _claim(store, {"q": 2, "r": 1})
    await _claim(store, {"q": 1}, worker_id=W2)

    await store.unregister_worker(W)

    assert await _offers(db) == {("q", W2): 1}


@pytest.mark.parametrize("setting", ["paused", "limited"])
async def test_pausing_or_limiting_a_queue_deletes_its_offers(
    stores: StoreFactory, db: asyncpg.Connection, setting: str
) -> None:
    store, _ = await _listening(stores)
    await _claim(store, {"q": 2, "r": 1})
    await _claim(store, {"q": 1, "r": 1}, worker_id=W2)
    await store.register_worker(WorkerInfo(W, "host", 1, {"q": 2, "r": 1}), 30.0)

    if setting == "paused":
        assert await store.set_paused("q", True)
    else:
        assert await store.set_queue_limit("q", 3)

    assert await _offers(db) == {("r", W): 1, ("r", W2): 1}


# -- after the handoff -----------------------------------------------------------------------
async def test_adopt_returns_the_jobs_handed_to_a_worker_that_it_does_not_know(
    stores: StoreFactory,
) -> None:
    worker_side, _ = await _listening(stores)
    client_side = await stores()
    await _claim(worker_side, {"q": 1})
    handed = await _enqueue_one(client_side, _job())
    await _enqueue_one(client_side, _job())  # queued: the offer is used up

    assert [j.id for j in await worker_side.adopt(W, [])] == [handed]
    assert await worker_side.adopt(W, [handed]) == []
    assert await worker_side.adopt(W2, []) == []


async def test_a_released_handoff_goes_back_to_the_queue_and_wakes_workers(
    stores: StoreFactory,
) -> None:
    worker_side, _ = await _listening(stores)
    other_side, other_notices = await _listening(stores)
    await _claim(worker_side, {"q": 1})
    job_id = await _enqueue_one(other_side, _job())
    await _wait_for(other_notices, lambda n: isinstance(n, JobHandedOff))
    other_notices.clear()

    release = Outcome(job_id, 1, OutcomeKind.RELEASED, "q")
    result = await worker_side.settle_and_claim([release], [], W, None)

    assert result.applied == (True,)
    job = await _get(worker_side, job_id)
    assert (job.state, job.attempt, job.locked_by) == (JobState.QUEUED, 0, None)
    assert (job.started_at, job.lease_expires_at, job.errors) == (None, None, ())
    await _wait_for(other_notices, lambda n: n == JobsAvailable(frozenset({"q"})))
    # Claimed afresh, it is the first attempt.
    claimed = await other_side.settle_and_claim(
        [], [], W2, ClaimRequest(W2, {"q": 1}, 30.0, kinds=("t",))
    )
    assert [(j.id, j.attempt) for j in claimed.claimed] == [(job_id, 1)]
