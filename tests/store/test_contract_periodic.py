"""The store contract, periodic ticks: one job per kind and tick.

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
    NewJobFactory,
    claim,
    claim_one,
    completed,
    settle,
)

from conveyor.store.base import Store
from conveyor.store.records import (
    JobFilter,
    JobState,
)


# -- periodic ticks --------------------------------------------------------------------------
async def test_enqueue_periodic_once_per_kind_and_tick(
    store: Store, new_job: NewJobFactory
) -> None:
    tick = float(int(time.time()) // 60 * 60)
    first = await store.enqueue_periodic(new_job(kind="test.cron"), tick)
    assert first is not None
    assert first.created
    assert await store.enqueue_periodic(new_job(kind="test.cron"), tick) is None
    [job] = await store.list_jobs(JobFilter(kind="test.cron"))
    assert job.id == first.id
    assert (job.state, job.attempt) == (JobState.QUEUED, 0)
    # The tick is per kind: another kind's job for the same tick is its own.
    other = await store.enqueue_periodic(new_job(kind="test.cron2"), tick)
    assert other is not None
    assert other.id != first.id
    assert len(await store.list_jobs(JobFilter())) == 2


async def test_enqueue_periodic_different_ticks_make_different_jobs(
    store: Store, new_job: NewJobFactory
) -> None:
    tick = float(int(time.time()) // 60 * 60)
    a = await store.enqueue_periodic(new_job(kind="test.cron"), tick)
    b = await store.enqueue_periodic(new_job(kind="test.cron"), tick + 60)
    assert a is not None
    assert b is not None
    assert a.id != b.id
    jobs = await store.list_jobs(JobFilter(kind="test.cron"))
    assert sorted(j.id for j in jobs) == sorted([a.id, b.id])


async def test_enqueue_periodic_is_not_blocked_by_a_finished_job_of_the_tick(
    store: Store, new_job: NewJobFactory
) -> None:
    """The tick, not the job's state, is the key: a tick whose job already ran is taken."""
    tick = float(int(time.time()) // 60 * 60)
    first = await store.enqueue_periodic(new_job(kind="test.cron"), tick)
    assert first is not None
    job = await claim_one(store, kinds=("test.cron",))
    assert await settle(store, W1, completed(job)) == (True,)
    assert await store.enqueue_periodic(new_job(kind="test.cron"), tick) is None
    assert len(await store.list_jobs(JobFilter(kind="test.cron"))) == 1


async def test_concurrent_enqueue_periodic_from_two_instances_enqueues_once(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    base = float(int(time.time()) // 60 * 60)
    ticks = [base + 60 * i for i in range(20)]
    for tick in ticks:
        results = await asyncio.gather(
            store.enqueue_periodic(new_job(kind="test.cron"), tick),
            peer_store.enqueue_periodic(new_job(kind="test.cron"), tick),
            store.enqueue_periodic(new_job(kind="test.cron"), tick),
            peer_store.enqueue_periodic(new_job(kind="test.cron"), tick),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, (tick, results)
    jobs = await store.list_jobs(JobFilter(kind="test.cron", limit=100))
    assert len(jobs) == len(ticks)
    assert len(await peer_store.list_jobs(JobFilter(limit=100))) == len(ticks)


async def test_prune_forgets_old_ticks_along_with_old_jobs(
    store: Store, new_job: NewJobFactory
) -> None:
    now = time.time()
    old_tick, recent_tick = float(int(now) - 7200), float(int(now) - 1)
    old = await store.enqueue_periodic(new_job(kind="test.cron"), old_tick)
    recent = await store.enqueue_periodic(new_job(kind="test.cron"), recent_tick)
    assert old is not None
    assert recent is not None
    for job in (await claim(store, slots={"default": 2}, kinds=("test.cron",))).claimed:
        assert await settle(store, W1, completed(job)) == (True,)
    await asyncio.sleep(0.02)

    # Ticks older than ten minutes go; the jobs finished just now stay.
    assert await store.prune(older_than_s=600) == 0
    assert {j.id for j in await store.list_jobs(JobFilter())} == {old.id, recent.id}
    again = await store.enqueue_periodic(new_job(kind="test.cron"), old_tick)
    assert again is not None, "the old tick should have been forgotten by prune"
    assert again.id not in (old.id, recent.id)
    assert await store.enqueue_periodic(new_job(kind="test.cron"), recent_tick) is None

    # Everything finished goes, and every tick before now with it.
    assert await store.prune(older_than_s=0.0) == 2
    assert [j.id for j in await store.list_jobs(JobFilter())] == [again.id]
    assert await store.get_job(old.id) is None
    assert await store.get_job(recent.id) is None
    assert await store.enqueue_periodic(new_job(kind="test.cron"), recent_tick) is not None
