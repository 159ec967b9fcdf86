"""Stopping jobs and workers: cancel, graceful shutdown, lost leases, rescue, memory
guard and pruning."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

import conveyor
from conveyor.store.base import CancelRequested, Store, StoreError
from conveyor.store.records import ClaimRequest, LeaseStatus

S = conveyor.JobState


class Sleeper:
    """An async handler that records how each attempt started and ended, then sleeps until
    cancelled (or, on ``quick_from`` and later attempts, returns at once)."""

    def __init__(self, quick_from: int | None = None, swallow_cancel: bool = False) -> None:
        self.started = asyncio.Event()
        self.attempts: list[int] = []
        self.cancelled: list[tuple[int, bool]] = []
        self.quick_from = quick_from
        self.swallow_cancel = swallow_cancel
        self.active = 0
        self.most_active = 0

    async def __call__(self, ctx: conveyor.JobContext, payload: Any) -> Any:
        self.attempts.append(ctx.attempt)
        self.started.set()
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.quick_from is not None and ctx.attempt >= self.quick_from:
                return {"attempt": ctx.attempt}
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.append((ctx.attempt, ctx.cancelled))
                if not self.swallow_cancel:
                    raise
            return {"late": ctx.attempt}
        finally:
            self.active -= 1


def register(kinds: conveyor.Registry, name: str, handler: Any, **options: Any) -> None:
    async def run(ctx: conveyor.JobContext, payload: Any) -> Any:
        return await handler(ctx, payload)

    conveyor.job(name, registry=kinds, **options)(run)


# -- cancel ----------------------------------------------------------------------------------
async def test_cancelled_queued_job_never_runs(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    sleeper = Sleeper(quick_from=1)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")

    await client.cancel(enqueued.id)
    await workers.burst()

    assert sleeper.attempts == []
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt) == (S.CANCELLED, 0)


async def test_cancel_a_running_job_stops_it_promptly(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    sleeper = Sleeper()
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    workers.start()
    await asyncio.wait_for(sleeper.started.wait(), 5)

    t0 = time.monotonic()
    requested = await client.cancel(enqueued.id)
    job = await wait_state(enqueued.id, "cancelled", timeout=2)

    assert time.monotonic() - t0 < 1
    assert requested.state == S.RUNNING
    assert requested.cancel_requested
    assert sleeper.cancelled == [(1, True)]
    assert (job.attempt, job.errors, job.result) == (1, (), None)
    assert job.finished_at is not None


async def test_cancel_from_another_process_stops_the_job(
    kinds: conveyor.Registry,
    client: conveyor.Client,
    peer_client: conveyor.Client,
    workers: Any,
    wait_state: Any,
) -> None:
    sleeper = Sleeper()
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    workers.start(cancel_check_interval=0.05)
    await asyncio.wait_for(sleeper.started.wait(), 5)

    t0 = time.monotonic()
    await peer_client.cancel(enqueued.id)
    await wait_state(enqueued.id, "cancelled", timeout=2)

    assert time.monotonic() - t0 < 1
    assert sleeper.cancelled == [(1, True)]


async def test_cancel_a_running_sync_job(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    started = threading.Event()
    noticed: list[bool] = []

    @conveyor.job("t.sync", registry=kinds)
    def polite(ctx: conveyor.JobContext, payload: Any) -> str:
        started.set()
        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        noticed.append(ctx.cancelled)
        return "ignored"

    enqueued = await client.enqueue("t.sync")
    workers.start()
    await asyncio.to_thread(started.wait, 5)

    await client.cancel(enqueued.id)
    job = await wait_state(enqueued.id, "cancelled", timeout=2)

    assert job.result is None
    # Recorded once the thread had returned, and it returned after it saw the cancel.
    assert noticed == [True]


async def test_cancelled_job_can_be_retried(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    sleeper = Sleeper(quick_from=2)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    workers.start()
    await asyncio.wait_for(sleeper.started.wait(), 5)
    await client.cancel(enqueued.id)
    await wait_state(enqueued.id, "cancelled")

    await client.retry(enqueued.id)
    job = await wait_state(enqueued.id, "completed")

    assert (job.attempt, job.result) == (2, {"attempt": 2})


# -- graceful stop ---------------------------------------------------------------------------
async def test_stop_lets_a_running_job_finish(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @conveyor.job("t.gated", registry=kinds)
    async def gated(ctx: conveyor.JobContext, payload: Any) -> str:
        started.set()
        await release.wait()
        return "finished"

    enqueued = await client.enqueue("t.gated")
    worker = workers.start(shutdown_grace=10)
    # Its handler, not only its row: a claimed job the worker has not yet taken up when
    # it stops fetching is handed back.
    await asyncio.wait_for(started.wait(), 5)

    worker.stop()
    later = await client.enqueue("t.gated")
    await worker.signals.next_idle(claimed=False)
    assert not workers.task(worker).done()
    assert (await client.get(enqueued.id)).state == S.RUNNING
    release.set()
    await workers.stop(worker, timeout=3)

    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (S.COMPLETED, "finished")
    # A stopping worker claims nothing new.
    assert (await client.get(later.id)).state == S.QUEUED


async def test_stop_hands_back_a_job_past_the_grace_period(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    sleeper = Sleeper()
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    worker = workers.start(shutdown_grace=0.2)
    await asyncio.wait_for(sleeper.started.wait(), 5)

    t0 = time.monotonic()
    await workers.stop(worker, timeout=3)

    assert time.monotonic() - t0 < 1.5
    assert sleeper.cancelled == [(1, True)]
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.errors) == (S.QUEUED, 0, ())
    assert (job.locked_by, job.lease_expires_at, job.started_at) == (None, None, None)


async def test_second_stop_hands_back_at_once(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    sleeper = Sleeper()
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    worker = workers.start(shutdown_grace=30)
    await asyncio.wait_for(sleeper.started.wait(), 5)

    t0 = time.monotonic()
    worker.stop()
    worker.stop()
    await workers.stop(worker, timeout=3)

    assert time.monotonic() - t0 < 1
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt) == (S.QUEUED, 0)


async def test_handed_back_job_runs_again_with_its_attempt_uncharged(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    sleeper = Sleeper()
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job", max_attempts=1)
    worker = workers.start(shutdown_grace=0)
    await asyncio.wait_for(sleeper.started.wait(), 5)
    await workers.stop(worker)

    sleeper.quick_from = 1
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.COMPLETED, 1, {"attempt": 1})


async def test_idle_worker_stops_at_once(workers: Any) -> None:
    worker = await workers.start_idle(shutdown_grace=30, safety_poll_interval=30)

    t0 = time.monotonic()
    await workers.stop(worker, timeout=2)

    assert time.monotonic() - t0 < 0.5


# -- leases ----------------------------------------------------------------------------------
class MuffledHeartbeats:
    """The store as a worker cut off from it sees it: heartbeats still read the state,
    but lease renewals never land."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        return await self._inner.heartbeat(worker_id, jobs, lease_s, False, memory_mb)


class SlowHeartbeats:
    """Heartbeats that take a while to answer, so the answer is about a moment that has
    passed, and that renew no lease of a first attempt."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        await asyncio.sleep(0.2)
        renew = renew and 1 not in jobs.values()
        return await self._inner.heartbeat(worker_id, jobs, lease_s, renew, memory_mb)


class CancelBeforeStart:
    """The store as a worker sees it when a cancel request lands right after a claim:
    the job is cancelled in the database, and the notice reaches the worker between the
    claim and the first step of the job's task."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._listeners: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_listener(self, listener: Any) -> Any:
        self._listeners.append(listener)
        return self._inner.add_listener(listener)

    async def settle_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._inner.settle_and_claim(*args, **kwargs)
        if result.claimed:
            ids = frozenset(job.id for job in result.claimed)
            for job_id in ids:
                await self._inner.cancel(job_id)
            loop = asyncio.get_running_loop()
            for listener in self._listeners:
                loop.call_soon(listener, CancelRequested(ids))
        return result


async def test_a_stale_heartbeat_answer_does_not_stop_the_next_attempt(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    attempts: list[int] = []

    @conveyor.job("t.job", registry=kinds)
    async def job(ctx: conveyor.JobContext, payload: Any) -> int:
        attempts.append(ctx.attempt)
        await asyncio.sleep(30 if ctx.attempt == 1 else 0.6)
        return ctx.attempt

    enqueued = await client.enqueue("t.job")
    # Attempt 1's lease runs out (no renewals) and the worker itself rescues and claims
    # the job again, while a heartbeat about attempt 1 is still on its way back.
    workers.start(
        workers.make(
            store=SlowHeartbeats(store),
            lease_s=0.6,
            heartbeat_interval=0.1,
            cancel_check_interval=0.01,
            rescue_interval=0.05,
        )
    )

    finished = await eventually(lambda: done(client, enqueued.id), timeout=5)

    assert (finished.attempt, finished.result) == (2, 2)
    assert attempts == [1, 2]


async def test_cancel_landing_before_the_job_task_starts_is_recorded(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    sleeper = Sleeper(quick_from=1)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")

    worker = workers.start(workers.make(store=CancelBeforeStart(store)))
    job = await wait_state(enqueued.id, "cancelled", timeout=3)

    assert sleeper.attempts == []
    assert (job.attempt, job.result) == (1, None)
    assert worker.running_jobs == []


async def test_heartbeats_keep_a_long_job_alive(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.long", registry=kinds)
    async def long(ctx: conveyor.JobContext, payload: Any) -> str:
        await release.wait()
        return "done"

    enqueued = await client.enqueue("t.long")
    workers.start(lease_s=0.4, heartbeat_interval=0.1, rescue_interval=0.05)
    await wait_state(enqueued.id, "running")

    await asyncio.sleep(1.0)  # well past the first lease
    assert (await client.get(enqueued.id)).state == S.RUNNING
    release.set()
    job = await wait_state(enqueued.id, "completed")

    assert (job.attempt, job.errors) == (1, ())


async def test_lost_lease_stops_the_job_and_drops_its_late_outcome(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    sleeper = Sleeper(quick_from=2)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    worker = workers.start(
        workers.make(store=MuffledHeartbeats(store), lease_s=0.5, heartbeat_interval=0.1)
    )
    await asyncio.wait_for(sleeper.started.wait(), 5)
    await client.pause("default")  # hold the rescued job in the queue to look at it

    await eventually(lambda: sleeper.cancelled, timeout=3)
    assert sleeper.cancelled == [(1, True)]
    await worker.signals.next_idle(claimed=False)
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.QUEUED, 1, None)
    [error] = job.errors
    assert (error.attempt, error.type) == (1, "LeaseExpired")
    assert worker.id in error.message

    await client.resume("default")
    job = await eventually(lambda: done(client, enqueued.id), timeout=3)
    assert (job.attempt, job.result) == (2, {"attempt": 2})
    assert len(job.errors) == 1


async def test_late_result_of_a_lost_attempt_is_not_recorded(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    # The handler ignores the cancellation and returns anyway: the store's guard must
    # refuse its result, since the job is no longer this attempt's.
    sleeper = Sleeper(quick_from=2, swallow_cancel=True)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    worker = workers.start(
        workers.make(store=MuffledHeartbeats(store), lease_s=0.5, heartbeat_interval=0.1)
    )
    await asyncio.wait_for(sleeper.started.wait(), 5)
    await client.pause("default")

    await eventually(lambda: sleeper.cancelled, timeout=3)
    await worker.signals.next_idle(claimed=False)
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.QUEUED, 1, None)

    await client.resume("default")
    job = await eventually(lambda: done(client, enqueued.id), timeout=3)
    assert (job.attempt, job.result) == (2, {"attempt": 2})


async def test_job_rescued_and_reclaimed_by_the_same_worker_stops_the_old_attempt(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    # The worker's own rescuer requeues the job and its exchange loop claims it again
    # before the lease keeper looks: attempt 1 must stop as attempt 2 starts, never run
    # beside it.
    sleeper = Sleeper(quick_from=2)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    worker = workers.make(
        store=MuffledHeartbeats(store),
        lease_s=0.3,
        heartbeat_interval=0.1,
        cancel_check_interval=5,
        rescue_interval=0.05,
    )
    workers.start(worker)

    job = await eventually(lambda: done(client, enqueued.id), timeout=3)

    assert sleeper.attempts == [1, 2]
    assert sleeper.cancelled == [(1, True)]
    assert sleeper.most_active == 1
    assert (job.attempt, job.result) == (2, {"attempt": 2})
    assert worker.running_jobs == []


async def test_lost_lease_of_a_sync_job_discards_its_result(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    noticed: list[int] = []
    started = threading.Event()

    @conveyor.job("t.sync", registry=kinds)
    def stubborn(ctx: conveyor.JobContext, payload: Any) -> dict[str, int]:
        if ctx.attempt == 1:
            started.set()
            deadline = time.monotonic() + 5
            while not ctx.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            noticed.append(ctx.attempt)
            return {"late": ctx.attempt}
        return {"attempt": ctx.attempt}

    enqueued = await client.enqueue("t.sync")
    workers.start(workers.make(store=MuffledHeartbeats(store), lease_s=0.5, heartbeat_interval=0.1))
    await asyncio.to_thread(started.wait, 5)

    job = await eventually(lambda: done(client, enqueued.id), timeout=4)
    await eventually(lambda: noticed == [1])  # the abandoned thread saw ctx.cancelled

    assert (job.attempt, job.result) == (2, {"attempt": 2})
    assert [e.type for e in job.errors] == ["LeaseExpired"]


async def done(client: conveyor.Client, job_id: int) -> conveyor.Job | None:
    job = await client.get(job_id)
    return job if job.state == S.COMPLETED else None


async def test_rescuer_requeues_the_job_of_a_dead_worker(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    sleeper = Sleeper(quick_from=1)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")
    # A worker claims the job, then dies: nobody renews its short lease.
    claimed = await store.settle_and_claim(
        [], [], "dead-worker", ClaimRequest("dead-worker", {"default": 1}, 0.2, kinds=("t.job",))
    )
    assert [j.id for j in claimed.claimed] == [enqueued.id]

    workers.start(rescue_interval=0.1)
    job = await eventually(lambda: done(client, enqueued.id), timeout=3)

    assert sleeper.attempts == [2]
    assert (job.attempt, job.result) == (2, {"attempt": 2})
    [error] = job.errors
    assert (error.attempt, error.type) == (1, "LeaseExpired")
    assert "dead-worker" in error.message


async def test_rescuer_is_not_blocked_by_a_full_worker(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.gated", registry=kinds)
    async def gated(ctx: conveyor.JobContext, payload: Any) -> None:
        await release.wait()

    orphan = await client.enqueue("t.gated", queue="other")
    await store.settle_and_claim(
        [], [], "dead-worker", ClaimRequest("dead-worker", {"other": 1}, 0.2, kinds=("t.gated",))
    )
    busy = await client.enqueue("t.gated")
    workers.start(queues={"default": 1}, rescue_interval=0.1)
    await wait_state(busy.id, "running")

    # The live worker is full and does not serve "other", yet the orphan is rescued.
    job = await wait_state(orphan.id, "queued", timeout=3)
    assert [e.type for e in job.errors] == ["LeaseExpired"]
    release.set()


async def test_rescued_job_without_attempts_left_fails(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    register(kinds, "t.job", Sleeper(quick_from=1))
    enqueued = await client.enqueue("t.job", max_attempts=1)
    await store.settle_and_claim(
        [], [], "dead-worker", ClaimRequest("dead-worker", {"default": 1}, 0.2, kinds=("t.job",))
    )

    workers.start(rescue_interval=0.1)
    job = await wait_state(enqueued.id, "failed", timeout=3)

    assert (job.attempt, [e.type for e in job.errors]) == (1, ["LeaseExpired"])


# -- memory guard ----------------------------------------------------------------------------
async def test_memory_above_the_limit_stops_fetching(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    sleeper = Sleeper(quick_from=1)
    register(kinds, "t.job", sleeper)
    enqueued = await client.enqueue("t.job")

    worker = workers.start(max_memory_mb=1)
    await eventually(lambda: registered(client, worker.id))
    # Pass after pass, the worker does not even ask for a job.
    for _ in range(3):
        idle = await worker.signals.next_idle(claimed=False)
        assert idle.claimed_at == float("-inf")

    assert sleeper.attempts == []
    assert (await client.get(enqueued.id)).state == S.QUEUED
    await workers.stop(worker)
    assert (await client.get(enqueued.id)).state == S.QUEUED


async def registered(client: conveyor.Client, worker_id: str) -> bool:
    return any(w.id == worker_id for w in await client.workers())


async def test_memory_below_the_limit_runs_jobs(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    register(kinds, "t.job", Sleeper(quick_from=1))
    enqueued = await client.enqueue("t.job")

    await workers.burst(max_memory_mb=1_000_000)

    assert (await client.get(enqueued.id)).state == S.COMPLETED


async def test_memory_guard_can_be_disabled(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    register(kinds, "t.job", Sleeper(quick_from=1))
    enqueued = await client.enqueue("t.job")

    await workers.burst(max_memory_mb=0)

    assert (await client.get(enqueued.id)).state == S.COMPLETED


# -- pruning ---------------------------------------------------------------------------------
async def test_pruner_deletes_old_finished_jobs_and_keeps_the_rest(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    @conveyor.job("t.outcome", max_attempts=1, registry=kinds)
    async def outcome(ctx: conveyor.JobContext, payload: str) -> str:
        if payload == "fail":
            raise ValueError("as asked")
        return payload

    completed = await client.enqueue("t.outcome", "ok")
    failed = await client.enqueue("t.outcome", "fail")
    cancelled = await client.enqueue("t.outcome", "ok", delay=60)
    await client.cancel(cancelled.id)
    scheduled = await client.enqueue("t.outcome", "ok", delay=60)
    unserved = await client.enqueue("t.outcome", "ok", queue="elsewhere")

    workers.start(retention_s=0.2, prune_interval=0.05)

    async def gone(job_id: int) -> bool:
        try:
            await client.get(job_id)
        except conveyor.JobNotFound:
            return True
        return False

    for job_id in (completed.id, failed.id, cancelled.id):
        await eventually(lambda job_id=job_id: gone(job_id), timeout=3)
    assert (await client.get(scheduled.id)).state == S.QUEUED
    assert (await client.get(unserved.id)).state == S.QUEUED


async def test_pruner_keeps_jobs_younger_than_the_retention(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    register(kinds, "t.job", Sleeper(quick_from=1))
    enqueued = await client.enqueue("t.job")

    worker = workers.start(retention_s=3600, prune_interval=0.05)
    await wait_state(enqueued.id, "completed")
    since = time.monotonic()
    for _ in range(2):  # passes of the pruner that began after the job had finished
        await worker.signals.pruned.wait(lambda p: p.began >= since)

    assert (await client.get(enqueued.id)).state == S.COMPLETED


class Unreachable:
    """The store after the database went away: every exchange fails once ``down`` is set."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.down = False
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def settle_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.failed += 1
            raise StoreError("connection refused")
        return await self._inner.settle_and_claim(*args, **kwargs)


async def test_second_stop_exits_while_the_store_is_down_with_reports_held(
    store: Store,
    kinds: conveyor.Registry,
    client: conveyor.Client,
    workers: Any,
    eventually: Any,
) -> None:
    release = asyncio.Event()

    async def wait_then_return(ctx: conveyor.JobContext, payload: Any) -> Any:
        await release.wait()
        return {"done": True}

    register(kinds, "t.job", wait_then_return)
    enqueued = await client.enqueue("t.job")
    unreachable = Unreachable(store)
    worker = workers.start(workers.make(store=unreachable, shutdown_grace=30))
    await worker.signals.job_started.wait()
    unreachable.down = True
    release.set()
    # The result cannot be recorded: the worker keeps it and retries with backoff.
    await eventually(lambda: unreachable.failed >= 2)

    worker.stop()
    worker.stop()
    t0 = time.monotonic()
    await workers.stop(worker, timeout=3)

    assert time.monotonic() - t0 < 1
    # It gave up after the failed exchange it was in, not by spinning on the dead store.
    assert unreachable.failed < 10
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt) == (S.RUNNING, 1)


class RefusesRegistration:
    """The store when the database goes away between a worker's start and its
    registration: notes whether the worker took its listener back."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.listening = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_listener(self, listener: Any) -> Any:
        self.listening += 1
        remove = self._inner.add_listener(listener)

        def removed() -> None:
            self.listening -= 1
            remove()

        return removed

    async def register_worker(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError("connection refused")


async def test_a_worker_that_cannot_register_leaves_nothing_behind(store: Store) -> None:
    refusing = RefusesRegistration(store)
    worker = conveyor.Worker(refusing)  # type: ignore[arg-type]

    with pytest.raises(StoreError, match="connection refused"):
        await asyncio.wait_for(worker.run(handle_signals=True), 5)

    assert refusing.listening == 0
    loop = asyncio.get_running_loop()
    # Its signal handlers are gone too: a new one can be added and removed cleanly.
    assert loop.remove_signal_handler(signal.SIGTERM) is False
