"""The store contract, an operator's verbs on jobs: prune, cancel, retry.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from contract_support import (
    W1,
    NewJobFactory,
    claim,
    claim_ids,
    claim_one,
    completed,
    enqueue_one,
    failed,
    get,
    settle,
    wait_until,
)

from conveyor.store.base import (
    CancelRequested,
    ConflictError,
    Notice,
    Store,
)
from conveyor.store.records import (
    JobFilter,
    JobState,
)


# -- prune -----------------------------------------------------------------------------------
async def test_prune_deletes_only_old_finished_jobs(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(payload={"i": i}) for i in range(5)])
    a, b, c = (await claim(store, slots={"default": 3})).claimed
    assert await settle(store, W1, completed(a), failed(b)) == (True, True)
    queued = [j.id for j in await store.list_jobs(JobFilter(state=JobState.QUEUED))]
    cancelled = queued[0]
    await store.cancel(cancelled)
    await asyncio.sleep(0.02)

    assert await store.prune(older_than_s=3600) == 0
    assert await store.prune(older_than_s=0.0) == 3
    remaining = {j.id: j.state for j in await store.list_jobs(JobFilter())}
    assert remaining == {c.id: JobState.RUNNING, queued[1]: JobState.QUEUED}
    for gone in (a.id, b.id, cancelled):
        assert await store.get_job(gone) is None


async def test_prune_respects_its_limit(store: Store, new_job: NewJobFactory) -> None:
    results = await store.enqueue([new_job() for _ in range(5)])
    for r in results:
        await store.cancel(r.id)
    await asyncio.sleep(0.02)
    assert await store.prune(0.0, limit=2) == 2
    assert await store.prune(0.0, limit=10) == 3
    assert await store.list_jobs(JobFilter()) == []


# -- cancel ----------------------------------------------------------------------------------
async def test_cancel_queued_job(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await store.cancel(job_id)
    assert job is not None
    assert job.state is JobState.CANCELLED
    assert job.finished_at is not None
    assert await get(store, job_id) == job
    assert await claim_ids(store) == []


async def test_cancel_running_job_requests_it(store: Store, new_job: NewJobFactory) -> None:
    notices: list[Notice] = []
    store.add_listener(notices.append)
    job_id = await enqueue_one(store, new_job())
    await claim_one(store)
    job = await store.cancel(job_id)
    assert job is not None
    assert job.state is JobState.RUNNING
    assert job.cancel_requested
    assert job.locked_by == W1
    assert job.finished_at is None
    assert await get(store, job_id) == job
    await wait_until(lambda: CancelRequested(frozenset({job_id})) in notices)


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
async def test_cancel_finished_job_changes_nothing(
    store: Store, new_job: NewJobFactory, end: str
) -> None:
    job_id = await enqueue_one(store, new_job())
    if end == "cancelled":
        await store.cancel(job_id)
    else:
        job = await claim_one(store)
        assert await settle(store, W1, completed(job) if end == "completed" else failed(job))
    before = await get(store, job_id)
    assert await store.cancel(job_id) == before
    assert await get(store, job_id) == before


async def test_cancel_unknown_job(store: Store) -> None:
    assert await store.cancel(123456) is None


# -- retry -----------------------------------------------------------------------------------
async def test_retry_failed_job_with_no_attempts_left(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=1))
    job = await claim_one(store)
    assert await settle(store, W1, failed(job)) == (True,)
    before = time.time()
    retried_job = await store.retry(job_id)
    assert retried_job is not None
    assert retried_job.state is JobState.QUEUED
    assert retried_job.attempt == 1
    assert retried_job.max_attempts == 2
    assert retried_job.finished_at is None
    assert retried_job.run_at >= before - 1
    assert len(retried_job.errors) == 1
    assert await get(store, job_id) == retried_job
    again = await claim_one(store)
    assert (again.id, again.attempt) == (job_id, 2)


async def test_retry_failed_job_with_attempts_left(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=3))
    job = await claim_one(store)
    assert await settle(store, W1, failed(job)) == (True,)
    retried_job = await store.retry(job_id)
    assert retried_job is not None
    assert (retried_job.state, retried_job.max_attempts) == (JobState.QUEUED, 3)


async def test_retry_cancelled_job(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    await store.cancel(job_id)
    retried_job = await store.retry(job_id)
    assert retried_job is not None
    assert retried_job.state is JobState.QUEUED
    assert not retried_job.cancel_requested
    assert retried_job.finished_at is None
    assert await claim_ids(store) == [job_id]


async def test_retry_leaves_other_states_unchanged(store: Store, new_job: NewJobFactory) -> None:
    done_id, running_id, queued_id = (
        r.id for r in await store.enqueue([new_job(), new_job(), new_job()])
    )
    done, _ = (await claim(store, slots={"default": 2})).claimed
    assert done.id == done_id
    assert await settle(store, W1, completed(done, "r")) == (True,)
    for job_id in (done_id, running_id, queued_id):
        before = await get(store, job_id)
        assert await store.retry(job_id) == before
        assert await get(store, job_id) == before
    assert await store.retry(123456) is None


async def test_retry_conflicting_unique_key(store: Store, new_job: NewJobFactory) -> None:
    first = await enqueue_one(store, new_job(unique_key="k"))
    job = await claim_one(store)
    assert await settle(store, W1, failed(job)) == (True,)
    second = await enqueue_one(store, new_job(unique_key="k"))
    assert second != first
    before = await get(store, first)
    with pytest.raises(ConflictError):
        await store.retry(first)
    assert await get(store, first) == before
    assert (await get(store, second)).state is JobState.QUEUED
