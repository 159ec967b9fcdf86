"""The store contract, queues: pause and resume, cluster-wide limits.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio

import pytest
from contract_support import (
    W1,
    W2,
    NewJobFactory,
    claim,
    claim_ids,
    completed,
    enqueue_one,
    outcome_of,
    retried,
    settle,
    stats_of,
    wait_until,
)

from conveyor.store.base import (
    JobsAvailable,
    Notice,
    Store,
)
from conveyor.store.records import (
    OutcomeKind,
    WorkerInfo,
)


# -- pause / resume --------------------------------------------------------------------------
async def test_paused_queue_is_not_claimed(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    other = await enqueue_one(store, new_job(queue="other"))
    await store.set_paused("default", True)
    assert (await stats_of(store)).paused
    assert await claim_ids(store, slots={"default": 5, "other": 5}) == [other]

    notices: list[Notice] = []
    store.add_listener(notices.append)
    await store.set_paused("default", False)
    assert not (await stats_of(store)).paused
    await wait_until(
        lambda: any(
            isinstance(n, JobsAvailable) and (n.queues is None or "default" in n.queues)
            for n in notices
        )
    )
    assert await claim_ids(store) == [job_id]


async def test_a_queue_that_does_not_exist_is_neither_paused_nor_limited(store: Store) -> None:
    # Changed by issue 10: pausing or limiting an unknown name used to create the queue.
    assert await store.set_paused("typo", True) is False
    assert await store.set_paused("typo", False) is False
    assert await store.set_queue_limit("typo", 2) is False
    assert await store.set_queue_limit("typo", None) is False
    assert [s.name for s in await store.queue_stats()] == []


async def test_a_queue_exists_with_a_job_a_setting_or_a_live_worker(
    store: Store, new_job: NewJobFactory
) -> None:
    # Any job, whatever its state, makes its queue exist.
    for queue, outcome in [("queued", None), ("running", None), ("done", OutcomeKind.COMPLETED)]:
        job_id = await enqueue_one(store, new_job(queue=queue))
        if queue != "queued":
            job = (await claim(store, W1, {queue: 1})).claimed[0]
            assert job.id == job_id
            if outcome is not None:
                assert await settle(store, W1, outcome_of(outcome, job)) == (True,)
        assert await store.set_paused(queue, True) is True
        assert (await stats_of(store, queue)).paused
    # A setting keeps it after its last job is gone.
    assert await store.set_queue_limit("done", 3) is True
    assert await store.prune(0) >= 1
    assert await store.set_paused("done", False) is True
    # A live worker serving it.
    await store.register_worker(WorkerInfo(W2, "host", 1, {"served": 2}), 30.0)
    assert await store.set_paused("served", True) is True
    assert (await stats_of(store, "served")).paused
    await store.register_worker(WorkerInfo(W1, "host", 2, {"gone": 2}), -1.0)
    assert await store.set_queue_limit("gone", 1) is False


async def test_pausing_an_empty_queue_lists_it(store: Store, new_job: NewJobFactory) -> None:
    await store.register_worker(WorkerInfo(W1, "host", 1, {"quiet": 1}), 30.0)
    assert await store.set_paused("quiet", True) is True
    stats = await stats_of(store, "quiet")
    assert stats.paused
    assert sum(stats.counts.values()) == 0


# -- cluster-wide queue limits -----------------------------------------------------------------
async def test_queue_limit_caps_claims(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(payload={"i": i}) for i in range(6)])
    await enqueue_one(store, new_job(queue="other"))
    await store.set_queue_limit("default", 2)

    first = (await claim(store, W1, {"default": 5, "other": 5})).claimed
    assert [j.queue for j in first].count("default") == 2
    assert [j.queue for j in first].count("other") == 1  # other queues are not capped
    assert await claim_ids(store, W2, {"default": 5}) == []  # the cap counts every worker

    a = next(j for j in first if j.queue == "default")
    assert await settle(store, W1, completed(a)) == (True,)
    second = await claim_ids(store, W2, {"default": 5})
    assert len(second) == 1
    assert await claim_ids(store, W1, {"default": 5}) == []
    assert (await stats_of(store)).running == 2

    # A failed, retried or released job frees its slot as well.
    b = next(j for j in first if j.queue == "default" and j.id != a.id)
    assert await settle(store, W1, retried(b, retry_in_s=3600)) == (True,)
    assert len(await claim_ids(store, W1, {"default": 5})) == 1


async def test_queue_limit_none_removes_the_cap(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(payload={"i": i}) for i in range(6)])
    await store.set_queue_limit("default", 2)
    assert len(await claim_ids(store, W1, {"default": 5})) == 2
    await store.set_queue_limit("default", None)
    assert len(await claim_ids(store, W1, {"default": 5})) == 4
    stats = await stats_of(store)
    assert (stats.running, stats.cluster_limit) == (6, None)


async def test_queue_limit_below_the_running_count_claims_nothing(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(payload={"i": i}) for i in range(6)])
    assert len(await claim_ids(store, W1, {"default": 3})) == 3
    await store.set_queue_limit("default", 1)
    assert await claim_ids(store, W2, {"default": 5}) == []
    assert (await stats_of(store)).running == 3


async def test_queue_stats_show_the_cluster_limit(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job())
    await store.register_worker(WorkerInfo("wa", "host", 1, {"default": 4}), lease_s=30)
    stats = await stats_of(store)
    assert (stats.limit, stats.cluster_limit) == (4, None)

    await store.set_queue_limit("default", 2)
    stats = await stats_of(store)
    assert (stats.limit, stats.cluster_limit) == (2, 2)
    # A queue without jobs or workers is not created by a limit (changed by issue 10).
    assert await store.set_queue_limit("video", 3) is False
    assert "video" not in {s.name for s in await store.queue_stats()}

    await store.set_queue_limit("default", None)
    stats = await stats_of(store)
    assert (stats.limit, stats.cluster_limit) == (4, None)


async def test_limit_and_pause_are_independent(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(payload={"i": i}) for i in range(3)])
    await store.set_queue_limit("default", 2)
    await store.set_paused("default", True)
    assert await claim_ids(store, W1, {"default": 5}) == []
    stats = await stats_of(store)
    assert (stats.paused, stats.cluster_limit) == (True, 2)
    await store.set_paused("default", False)
    assert len(await claim_ids(store, W1, {"default": 5})) == 2
    assert (await stats_of(store)).cluster_limit == 2


@pytest.mark.parametrize("setter", ["store", "peer"])
async def test_concurrent_claims_from_two_instances_never_exceed_the_limit(
    store: Store, peer_store: Store, new_job: NewJobFactory, setter: str
) -> None:
    """Two instances (two worker processes' views) claim at the same moment, round after
    round; together they never hold more than the limit. ``setter`` is the instance that
    set the limit; the other one learns of it only through the database."""
    rounds, limit = 15, 2
    await store.enqueue([new_job(payload={"i": i}) for i in range(rounds * limit + 5)])
    await (store if setter == "store" else peer_store).set_queue_limit("default", limit)
    claimed_ids: list[int] = []
    for _ in range(rounds):
        a, b = await asyncio.gather(
            claim(store, W1, {"default": 5}), claim(peer_store, W2, {"default": 5})
        )
        got = list(a.claimed) + list(b.claimed)
        assert len(got) == limit, f"claimed {len(got)} with a limit of {limit}"
        assert (await stats_of(store)).running == limit
        claimed_ids += [j.id for j in got]
        assert await settle(store, W1, *(completed(j) for j in a.claimed)) == (True,) * len(
            a.claimed
        )
        assert await settle(peer_store, W2, *(completed(j) for j in b.claimed)) == (True,) * len(
            b.claimed
        )
    assert len(set(claimed_ids)) == rounds * limit
