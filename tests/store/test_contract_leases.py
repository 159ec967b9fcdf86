"""The store contract, leases: the heartbeat that renews them, the rescue of expired ones.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio
import time

from contract_support import (
    W1,
    W2,
    NewJobFactory,
    claim,
    claim_one,
    completed,
    enqueue_one,
    get,
    settle,
    stats_of,
)

from conveyor.store.base import Store
from conveyor.store.records import (
    JobFilter,
    JobState,
    WorkerInfo,
)


# -- heartbeat -------------------------------------------------------------------------------
async def test_a_renewing_heartbeat_records_the_workers_memory(store: Store) -> None:
    await store.register_worker(WorkerInfo(W1, "host", 1, {"default": 1}, memory_mb=10.5), 30.0)

    async def memory() -> float | None:
        [info] = await store.list_workers()
        return info.memory_mb

    assert await memory() == 10.5
    await store.heartbeat(W1, {}, 30.0, True, 42.25)
    assert await memory() == 42.25
    await store.heartbeat(W1, {}, 30.0, True)  # none measured: the last value stays
    assert await memory() == 42.25
    await store.heartbeat(W1, {}, 30.0, False, 99.0)  # no renewal: nothing written
    assert await memory() == 42.25


async def test_heartbeat_reports_held_jobs(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job() for _ in range(3)])
    a, b = (await claim(store, W1, {"default": 2})).claimed
    c = (await claim(store, W2, {"default": 1})).claimed[0]
    status = await store.heartbeat(
        W1, {a.id: a.attempt, b.id: b.attempt + 1, c.id: c.attempt}, 30.0, renew=False
    )
    assert status.held == {a.id}
    assert status.cancel_requested == frozenset()

    assert await settle(store, W1, completed(a)) == (True,)
    status = await store.heartbeat(W1, {a.id: a.attempt}, 30.0, renew=False)
    assert status.held == frozenset()


async def test_heartbeat_renew_extends_leases(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store, lease_s=1.0)
    assert job.lease_expires_at is not None
    before = time.time()
    status = await store.heartbeat(W1, {job_id: job.attempt}, 60.0, renew=True)
    after = time.time()
    assert status.held == {job_id}
    renewed = await get(store, job_id)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at >= job.lease_expires_at + 58
    # 60 s from the heartbeat, not from the claim and not longer.
    assert before + 60 - 1 <= renewed.lease_expires_at <= after + 60 + 1

    # Without renew, nothing changes.
    await store.heartbeat(W1, {job_id: job.attempt}, 1.0, renew=False)
    assert await get(store, job_id) == renewed


async def test_heartbeat_renews_only_the_reported_attempts(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store, lease_s=1.0)
    before = await get(store, job_id)
    status = await store.heartbeat(W1, {job_id: job.attempt + 1}, 60.0, renew=True)
    assert status.held == frozenset()
    assert await get(store, job_id) == before
    status = await store.heartbeat(W1, {}, 60.0, renew=True)
    assert status.held == frozenset()
    assert await get(store, job_id) == before


async def test_heartbeat_reports_cancel_requests(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(), new_job()])
    a, b = (await claim(store, W1, {"default": 2})).claimed
    await store.cancel(b.id)
    status = await store.heartbeat(W1, {a.id: a.attempt, b.id: b.attempt}, 30.0, renew=True)
    assert status.held == {a.id, b.id}
    assert status.cancel_requested == {b.id}


# -- rescue ----------------------------------------------------------------------------------
async def test_rescue_requeues_an_expired_job(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    await claim_one(store, W1, lease_s=0.05)
    await asyncio.sleep(0.1)
    result = await store.rescue()
    assert (result.requeued, result.failed, result.cancelled) == ((job_id,), (), ())
    job = await get(store, job_id)
    assert job.state is JobState.QUEUED
    assert job.attempt == 1
    assert job.locked_by is None
    assert job.lease_expires_at is None
    assert job.finished_at is None
    [entry] = job.errors
    assert (entry.attempt, entry.type) == (1, "LeaseExpired")
    assert entry.message

    again = await claim_one(store, W2)
    assert (again.id, again.attempt) == (job_id, 2)
    assert (await store.rescue()).total == 0


async def test_rescue_fails_a_job_without_attempts_left(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=1))
    await claim_one(store, lease_s=0.05)
    await asyncio.sleep(0.1)
    result = await store.rescue()
    assert (result.requeued, result.failed, result.cancelled) == ((), (job_id,), ())
    job = await get(store, job_id)
    assert job.state is JobState.FAILED
    assert job.finished_at is not None
    assert [e.type for e in job.errors] == ["LeaseExpired"]
    assert job.errors[0].attempt == 1


async def test_rescue_cancels_a_job_with_a_cancel_request(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    await claim_one(store, lease_s=0.05)
    await store.cancel(job_id)
    await asyncio.sleep(0.1)
    result = await store.rescue()
    assert (result.requeued, result.failed, result.cancelled) == ((), (), (job_id,))
    job = await get(store, job_id)
    assert job.state is JobState.CANCELLED
    assert job.finished_at is not None


async def test_rescue_leaves_live_leases_alone(store: Store, new_job: NewJobFactory) -> None:
    live_id = await enqueue_one(store, new_job())
    await claim_one(store, W1, lease_s=30)
    queued_id = await enqueue_one(store, new_job())
    live, queued = await get(store, live_id), await get(store, queued_id)
    await asyncio.sleep(0.05)
    assert (await store.rescue()).total == 0
    assert await get(store, live_id) == live
    assert await get(store, queued_id) == queued


async def test_rescue_respects_its_limit(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job() for _ in range(5)])
    await claim(store, W1, {"default": 5}, lease_s=0.05)
    await asyncio.sleep(0.1)
    assert (await store.rescue(limit=2)).total == 2
    assert (await store.rescue(limit=10)).total == 3
    assert (await stats_of(store)).counts[JobState.QUEUED] == 5


async def test_concurrent_rescues_act_once(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job() for _ in range(50)])
    await claim(store, W1, {"default": 50}, lease_s=0.05)
    await asyncio.sleep(0.1)
    results = await asyncio.gather(
        store.rescue(limit=10), peer_store.rescue(limit=10), store.rescue(), peer_store.rescue()
    )
    rescued = [i for r in results for i in r.requeued + r.failed + r.cancelled]
    assert len(rescued) == 50
    assert len(set(rescued)) == 50
    for job in await store.list_jobs(JobFilter(limit=100)):
        assert (job.state, job.attempt, len(job.errors)) == (JobState.QUEUED, 1, 1)
