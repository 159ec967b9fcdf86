"""The store contract, queue statistics.

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
    completed,
    enqueue_one,
    failed,
    settle,
    stats_of,
)

from conveyor.store.base import Store
from conveyor.store.records import (
    JobState,
    WorkerInfo,
)


# -- queue statistics ------------------------------------------------------------------------
async def test_queue_stats_counts_every_state(store: Store, new_job: NewJobFactory) -> None:
    due = [r.id for r in await store.enqueue([new_job() for _ in range(6)])]
    await enqueue_one(store, new_job(delay_s=60))
    a, b, _, _ = (await claim(store, slots={"default": 4})).claimed
    assert await settle(store, W1, completed(a), failed(b)) == (True, True)
    await store.cancel(due[-1])
    await asyncio.sleep(0.01)

    stats = await stats_of(store)
    assert stats.counts == {
        "queued": 2,
        "running": 2,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert set(stats.counts) == {s.value for s in JobState}
    assert stats.scheduled == 1
    assert stats.running == 2
    assert stats.completed_last_minute == 1
    assert stats.failed_last_minute == 1
    assert stats.run_time_p50_s is not None
    assert stats.run_time_p95_s is not None
    assert 0 <= stats.run_time_p50_s <= stats.run_time_p95_s < 10
    assert stats.oldest_queued_age_s is not None
    assert 0 <= stats.oldest_queued_age_s < 10
    assert stats.limit is None
    assert not stats.paused


async def test_queue_stats_without_finished_counts(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job() for _ in range(4)])
    await enqueue_one(store, new_job(delay_s=60))
    a, b, _ = (await claim(store, slots={"default": 3})).claimed
    assert await settle(store, W1, completed(a), failed(b)) == (True, True)
    await enqueue_one(store, new_job(queue="finished-only"))
    c = (await claim(store, slots={"finished-only": 1})).claimed[0]
    assert await settle(store, W1, completed(c)) == (True,)

    light = {s.name: s for s in await store.queue_stats(finished=False)}
    stats = light["default"]
    assert stats.counts == {"queued": 2, "running": 1}
    assert (stats.scheduled, stats.running) == (1, 1)
    assert (stats.completed_last_minute, stats.failed_last_minute) == (1, 1)
    assert stats.run_time_p50_s is not None
    # A queue with nothing active is listed only with its finished counts.
    assert "finished-only" not in light
    full = await stats_of(store, "finished-only")
    assert full.counts["completed"] == 1


async def test_queue_stats_of_an_idle_queue(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job(delay_s=60))
    stats = await stats_of(store)
    assert stats.counts[JobState.QUEUED] == 1
    assert stats.scheduled == 1
    assert stats.oldest_queued_age_s is None
    assert stats.run_time_p50_s is None
    assert stats.run_time_p95_s is None
    assert (stats.completed_last_minute, stats.failed_last_minute) == (0, 0)


async def test_oldest_queued_age(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job(run_at=time.time() - 5))
    await enqueue_one(store, new_job())
    age = (await stats_of(store)).oldest_queued_age_s
    assert age is not None
    assert 5 <= age < 15


async def test_queue_stats_limit_from_live_workers(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job())
    await store.register_worker(WorkerInfo("wa", "host", 1, {"default": 4}), lease_s=30)
    assert (await stats_of(store)).limit == 4
    await store.register_worker(WorkerInfo("wb", "host", 2, {"default": 2, "video": 1}), 30)
    assert (await stats_of(store)).limit == 6
    video = await stats_of(store, "video")
    assert video.limit == 1
    assert sum(video.counts.values()) == 0
    await store.unregister_worker("wa")
    assert (await stats_of(store)).limit == 2


async def test_queue_stats_ignores_expired_workers(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job())
    await store.register_worker(WorkerInfo("wa", "host", 1, {"default": 4}), lease_s=0.01)
    await asyncio.sleep(0.05)
    assert (await stats_of(store)).limit is None
