"""The worker's side of handoff (PostgreSQL): it runs jobs handed to it in a notice, keeps
its offers in step, hands back a job it has no slot for, adopts a job whose notice was
lost and takes its offers back when it stops.

Jobs are enqueued through ``peer_client``, a second store instance, as another process
would. A job handed off was inserted running, so its ``started_at`` equals its
``created_at``; a claimed job starts in a later transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import conveyor
from conveyor.store.base import JobHandedOff, JobsAvailable, Notice, Store
from conveyor.store.postgres import PostgresStore
from pg_server import PgTestServer

# Far away: only notices and finished jobs make the worker claim, so every change to its
# offers in these tests comes from the handoff path.
QUIET = {"safety_poll_interval": 30.0, "rescue_interval": 30.0}

Wait = Callable[..., Awaitable[Any]]


@pytest.fixture
def store_kind(pg_server: PgTestServer) -> str:
    """Handoff exists on PostgreSQL alone: this module's stores are PostgreSQL's."""
    pg_server.empty()
    return "postgresql"


def _offer_key(store: Store) -> int:
    assert isinstance(store, PostgresStore)
    assert store._listener.offer_key is not None, "the store's LISTEN connection is down"
    return store._listener.offer_key


async def _offers(db: asyncpg.Connection, worker: conveyor.Worker) -> dict[str, int]:
    """The worker's free slots on offer, by queue."""
    rows = await db.fetch(
        "SELECT queue, slots FROM conveyor_offers WHERE worker_id = $1", worker.id
    )
    return {r["queue"]: r["slots"] for r in rows}


async def _offering(
    db: asyncpg.Connection, worker: conveyor.Worker, eventually: Wait, slots: dict[str, int]
) -> None:
    """Until the worker offers ``slots``."""

    async def offered() -> bool:
        return await _offers(db, worker) == slots

    await eventually(offered)


async def _idle_worker(
    store: Store, workers: Any, db: asyncpg.Connection, eventually: Wait, queues: dict[str, int]
) -> conveyor.Worker:
    """A worker that has made its one claim and offered every slot. The store listens
    before the worker starts, so no notice of its LISTEN connection coming up can make
    the worker claim again later and rewrite its offer behind a test's back."""
    await _listening(store)
    worker = await workers.start_idle(queues=queues, **QUIET)
    assert await _offers(db, worker) == queues  # written by the claim it made
    return worker


async def _listening(store: Store) -> list[Notice]:
    """The notices ``store`` receives from now on, once its LISTEN connection is up."""
    notices: list[Notice] = []
    store.add_listener(notices.append)
    await _first(notices, lambda n: n == JobsAvailable(None))
    return notices


async def _first(notices: list[Notice], predicate: Callable[[Notice], bool]) -> Notice:
    async with asyncio.timeout(5):
        while True:
            for notice in notices:
                if predicate(notice):
                    return notice
            await asyncio.sleep(0.005)


async def test_an_idle_worker_runs_a_job_handed_to_it_and_offers_the_slot_again(
    store: Store,
    kinds: conveyor.Registry,
    peer_client: conveyor.Client,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_state: Wait,
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.wait", registry=kinds)
    async def wait(ctx: conveyor.JobContext, payload: Any) -> str:
        await release.wait()
        return "done"

    worker = await _idle_worker(store, workers, db, eventually, {"default": 2})

    enqueued = await peer_client.enqueue("t.wait")

    running = await wait_state(enqueued.id, "running")
    assert (running.locked_by, running.attempt) == (worker.id, 1)
    assert running.started_at == running.created_at
    assert await _offers(db, worker) == {"default": 1}
    release.set()
    done = await wait_state(enqueued.id, "completed")
    assert (done.result, done.attempt) == ("done", 1)
    # No claim since (the queue was drained and no poll is due): the exchange that
    # recorded the result gave the slot back to the offer.
    await _offering(db, worker, eventually, {"default": 2})


async def test_a_job_too_large_for_its_notice_is_read_and_run(
    store: Store,
    kinds: conveyor.Registry,
    peer_store: Store,
    peer_client: conveyor.Client,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_state: Wait,
) -> None:
    seen: list[int] = []

    @conveyor.job("t.big", registry=kinds)
    async def big(ctx: conveyor.JobContext, payload: dict[str, str]) -> None:
        seen.append(len(payload["blob"]))

    worker = await _idle_worker(store, workers, db, eventually, {"default": 2})
    notices = await _listening(peer_store)

    enqueued = await peer_client.enqueue("t.big", {"blob": "x" * 10_000})

    assert await _first(notices, lambda n: isinstance(n, JobHandedOff)) == JobHandedOff(
        worker.id, enqueued.id, 1, None
    )
    done = await wait_state(enqueued.id, "completed")
    assert done.started_at == done.created_at
    assert seen == [10_000]


async def test_a_handoff_the_worker_has_no_slot_for_goes_back_to_the_queue(
    store: Store,
    kinds: conveyor.Registry,
    peer_store: Store,
    peer_client: conveyor.Client,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_job: Wait,
    wait_state: Wait,
) -> None:
    """An enqueue can take an offer while a claim fills the slot: the worker hands the
    job back (attempt undone) and runs it once a slot is free."""
    release = asyncio.Event()
    runs: list[tuple[int, int]] = []

    @conveyor.job("t.block", registry=kinds)
    async def block(ctx: conveyor.JobContext, payload: Any) -> None:
        await release.wait()

    @conveyor.job("t.record", registry=kinds)
    async def record(ctx: conveyor.JobContext, payload: Any) -> None:
        runs.append((ctx.id, ctx.attempt))

    worker = await _idle_worker(store, workers, db, eventually, {"default": 1})
    blocker = await peer_client.enqueue("t.block")
    await wait_state(blocker.id, "running")
    # The stale offer of the race, with the worker's live key.
    await db.execute(
        "INSERT INTO conveyor_offers (queue, worker_id, slots, lock_key, lease_s) "
        "VALUES ('default', $1, 1, $2, 30) "
        "ON CONFLICT (queue, worker_id) DO UPDATE SET slots = 1",
        worker.id,
        _offer_key(store),
    )
    notices = await _listening(peer_store)

    late = await peer_client.enqueue("t.record")

    await _first(notices, lambda n: isinstance(n, JobHandedOff) and n.job_id == late.id)
    released = await wait_job(late.id, lambda j: j.state == "queued")
    assert (released.attempt, released.locked_by, released.errors) == (0, None, ())
    assert runs == []
    release.set()
    done = await wait_state(late.id, "completed")
    assert runs == [(late.id, 1)]
    assert done.started_at != done.created_at  # claimed, not handed off


async def _kill_listen_connection(db: asyncpg.Connection, store: Store) -> None:
    """Terminate the store's LISTEN backend (found by the advisory lock it holds on its
    offer key) and wait until it is gone."""
    pid = await db.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND ((classid::bigint << 32) | objid::bigint) = $1",
        _offer_key(store),
    )
    assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)


class _SlowRead:
    """The store, whose ``get_job`` reads at once but answers only when ``gate`` opens."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.reads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_job(self, job_id: int) -> Any:
        job = await self._inner.get_job(job_id)
        self.reads.append(job_id)
        await self.gate.wait()
        return job


async def test_a_large_handoff_adopted_while_it_was_read_runs_once(
    store: Store,
    kinds: conveyor.Registry,
    peer_client: conveyor.Client,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_state: Wait,
) -> None:
    """A job too large for its notice is read by id. If the LISTEN connection drops while
    that read is in flight, the same attempt is adopted (and may finish) before the read
    answers: the answer must not start it a second time."""
    runs: list[tuple[int, int]] = []

    @conveyor.job("t.big", registry=kinds)
    async def big(ctx: conveyor.JobContext, payload: Any) -> None:
        runs.append((ctx.id, ctx.attempt))

    await _listening(store)
    slow = _SlowRead(store)
    worker = await workers.start_idle(workers.make(store=slow, queues={"default": 2}, **QUIET))
    assert await _offers(db, worker) == {"default": 2}
    enqueued = await peer_client.enqueue("t.big", {"blob": "x" * 10_000})
    await eventually(lambda: slow.reads == [enqueued.id])

    await _kill_listen_connection(db, store)
    await wait_state(enqueued.id, "completed")
    assert runs == [(enqueued.id, 1)]

    handled = worker.signals.handoff_taken.wait(lambda h: h.job_id == enqueued.id)
    slow.gate.set()
    # The read's answer came after the attempt was adopted (and finished): not taken.
    assert not (await handled).accepted
    assert runs == [(enqueued.id, 1)]


async def test_a_job_whose_notice_was_lost_is_adopted(
    store: Store,
    kinds: conveyor.Registry,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_state: Wait,
) -> None:
    """A job running under the worker that it never heard of (its handoff notice was
    lost with the LISTEN connection) is found when the connection comes back, and run as
    the same attempt. Its 30 s lease rules out a rescue within the test."""
    runs: list[tuple[int, int]] = []

    @conveyor.job("t.record", registry=kinds)
    async def record(ctx: conveyor.JobContext, payload: Any) -> None:
        runs.append((ctx.id, ctx.attempt))

    worker = await _idle_worker(store, workers, db, eventually, {"default": 2})
    job_id = await db.fetchval(
        "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
        "max_attempts, run_at, created_at, attempt, locked_by, lease_expires_at, started_at) "
        "VALUES ('default', 'default', 't.record', 2, 'running', '{}', 3, now(), now(), 1, "
        "$1, now() + interval '30 seconds', now()) RETURNING id",
        worker.id,
    )
    adopted = worker.signals.adopted.wait(lambda jobs: [j.id for j in jobs] == [job_id])

    await _kill_listen_connection(db, store)

    [job] = await adopted
    assert (job.attempt, job.locked_by) == (1, worker.id)
    done = await wait_state(job_id, "completed")
    assert done.attempt == 1
    assert runs == [(job_id, 1)]


async def test_an_adopted_job_of_a_kind_the_worker_lacks_is_handed_back_uncharged(
    store: Store,
    kinds: conveyor.Registry,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
    wait_job: Wait,
) -> None:
    """A job of another kind running under the worker (handed to it by a process of an
    older release, whose enqueue did not read the offer's kinds, its notice lost) is
    given back to the queue with the attempt not charged, and never claimed again by
    this worker: no loop."""

    @conveyor.job("t.mine", registry=kinds)
    async def mine(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    worker = await _idle_worker(store, workers, db, eventually, {"default": 2})
    job_id = await db.fetchval(
        "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
        "max_attempts, run_at, created_at, attempt, locked_by, lease_expires_at, started_at) "
        "VALUES ('default', 'default', 't.theirs', 2, 'running', '{}', 3, now(), now(), 1, "
        "$1, now() + interval '30 seconds', now()) RETURNING id",
        worker.id,
    )

    await _kill_listen_connection(db, store)

    job = await wait_job(job_id, lambda j: j.state == "queued")
    assert (job.attempt, job.locked_by, job.errors) == (0, None, ())
    # The hand-back woke the queue; the worker's claims ask for t.mine only.
    await _offering(db, worker, eventually, {"default": 2})
    assert (await store.get_job(job_id)) == job


async def test_a_stopping_worker_takes_its_offers_back_at_once(
    store: Store,
    kinds: conveyor.Registry,
    client: conveyor.Client,
    peer_client: conveyor.Client,
    workers: Any,
    db: asyncpg.Connection,
    eventually: Wait,
) -> None:
    """Withdrawn when it stops fetching, not when its running jobs have finished: an
    enqueue meanwhile must not hand it a job."""
    started, release = asyncio.Event(), asyncio.Event()

    @conveyor.job("t.wait", registry=kinds)
    async def wait(ctx: conveyor.JobContext, payload: Any) -> None:
        started.set()
        await release.wait()

    worker = await _idle_worker(store, workers, db, eventually, {"default": 2})
    running = await peer_client.enqueue("t.wait")
    # Running in the database is not enough: a handoff whose notice reaches the worker
    # after it stopped fetching is handed back to the queue, as it should be.
    await asyncio.wait_for(started.wait(), 10)
    await _offering(db, worker, eventually, {"default": 1})
    withdrawn = worker.signals.offers_changed.wait()

    worker.stop()

    assert await withdrawn == frozenset()
    await _offering(db, worker, eventually, {})
    assert (await client.get(running.id)).state == conveyor.JobState.RUNNING
    release.set()
    await asyncio.wait_for(workers.task(worker), 10)
    assert (await client.get(running.id)).state == conveyor.JobState.COMPLETED
    assert await db.fetchval("SELECT count(*) FROM conveyor_offers") == 0
