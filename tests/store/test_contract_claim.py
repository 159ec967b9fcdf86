"""The store contract, claiming: which kinds, in which order, how many, never one job twice.

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
    W2,
    NewJobFactory,
    claim,
    claim_ids,
    claim_ids_of,
    enqueue_one,
    get,
    stats_of,
)

from conveyor.store.base import Store
from conveyor.store.records import (
    JobFilter,
    JobState,
    WorkerInfo,
)


# -- claim by kind ---------------------------------------------------------------------------
async def test_a_claim_takes_only_the_kinds_it_names(store: Store, new_job: NewJobFactory) -> None:
    thumb = await enqueue_one(store, new_job(kind="media.thumbnail", priority=1))
    report = await enqueue_one(store, new_job(kind="media.report", priority=2))

    got = await claim(store, W1, slots={"default": 5}, kinds=("media.report",))

    assert [j.id for j in got.claimed] == [report]
    assert (await get(store, thumb)).state is JobState.QUEUED
    assert (await get(store, thumb)).attempt == 0
    assert await claim_ids_of(store, W2, ("media.thumbnail", "media.other")) == [thumb]
    assert await claim_ids_of(store, W1, ("media.report",)) == []


async def test_strict_priority_then_fifo_across_the_claimed_kinds(
    store: Store, new_job: NewJobFactory
) -> None:
    spec = [("a", 3), ("b", 1), ("c", 2), ("a", 1), ("b", 3), ("c", 1), ("a", 2), ("x", 1)]
    ids = [await enqueue_one(store, new_job(kind=k, priority=p)) for k, p in spec]
    expected = [
        i
        for (k, p), i in sorted(zip(spec, ids, strict=True), key=lambda t: (t[0][1], t[1]))
        if k != "x"
    ]

    got: list[int] = []
    for _ in range(4):
        got += await claim_ids_of(store, W1, ("a", "b", "c"), n=2)

    assert got == expected
    assert [j.kind for j in await store.list_jobs(JobFilter(state=JobState.QUEUED))] == ["x"]


async def test_a_claim_of_few_skips_candidates_of_other_kinds_in_order(
    store: Store, new_job: NewJobFactory
) -> None:
    """Each kind offers up to n candidates; only the first n of all of them are taken, and
    the rest stay queued for the next claim, none lost or locked for good."""
    ids = {k: [await enqueue_one(store, new_job(kind=k)) for _ in range(3)] for k in "ab"}
    first = await claim_ids_of(store, W1, ("a", "b"), n=3)
    assert first == sorted([*ids["a"], *ids["b"]])[:3]
    rest = await claim_ids_of(store, W2, ("a", "b"), n=10)
    assert sorted(first + rest) == sorted([*ids["a"], *ids["b"]])


async def test_a_pile_of_unserved_jobs_at_the_head_does_not_stop_a_claim(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(kind="nobody.runs", priority=1) for _ in range(3000)])
    served = await enqueue_one(store, new_job(kind="t.served", priority=5))

    assert await claim_ids_of(store, W1, ("t.served",), n=10) == [served]
    stats = await stats_of(store)
    assert stats.counts[JobState.QUEUED] == 3000
    assert stats.unserved_kinds == {"nobody.runs": 3000}


async def test_a_claim_with_no_kinds_takes_nothing(store: Store, new_job: NewJobFactory) -> None:
    await enqueue_one(store, new_job())
    assert await claim_ids_of(store, W1, (), n=10) == []


async def test_next_run_at_counts_only_the_claimed_kinds(
    store: Store, new_job: NewJobFactory
) -> None:
    soon = time.time() + 30
    await enqueue_one(store, new_job(kind="other", run_at=soon))
    later = time.time() + 300
    await enqueue_one(store, new_job(kind="mine", run_at=later))

    result = await claim(store, W1, slots={"default": 5}, kinds=("mine",))

    assert result.claimed == ()
    assert result.next_run_at == pytest.approx(later, abs=0.01)


async def test_queue_stats_show_which_workers_serve_which_kinds(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue(
        [
            new_job(kind=k)
            for k in ("media.thumbnail", "media.report", "video.process", "video.process")
        ]
    )
    await store.register_worker(
        WorkerInfo("wa", "h", 1, {"default": 4}, kinds=("media.thumbnail",)), 30
    )
    await store.register_worker(
        WorkerInfo(
            "wb", "h", 2, {"default": 1, "gpu": 1}, kinds=("media.report", "media.thumbnail")
        ),
        30,
    )

    stats = await stats_of(store)
    assert stats.served_kinds == {"media.report": ("wb",), "media.thumbnail": ("wa", "wb")}
    assert stats.unserved_kinds == {"video.process": 2}
    assert stats.counts[JobState.QUEUED] == 4
    gpu = await stats_of(store, "gpu")
    assert gpu.served_kinds == {"media.report": ("wb",), "media.thumbnail": ("wb",)}
    assert gpu.unserved_kinds == {}
    assert stats.to_json()["unserved_kinds"] == {"video.process": 2}
    assert stats.to_json()["served_kinds"] == {
        "media.report": ["wb"],
        "media.thumbnail": ["wa", "wb"],
    }


# -- claim order -----------------------------------------------------------------------------
async def test_strict_priority_then_fifo(store: Store, new_job: NewJobFactory) -> None:
    priorities = [3, 1, 2, 1, 3, 2, 1]
    ids = [(await enqueue_one(store, new_job(priority=p))) for p in priorities]
    expected = [i for _, i in sorted(zip(priorities, ids, strict=True))]
    got: list[int] = []
    for _ in range(3):
        got += await claim_ids(store, slots={"default": 3})
    assert got == expected


async def test_priority_within_one_bulk_call(store: Store, new_job: NewJobFactory) -> None:
    results = await store.enqueue([new_job(priority=p) for p in (2, 2, 1, 3, 1)])
    ids = [r.id for r in results]
    assert await claim_ids(store, slots={"default": 2}) == [ids[2], ids[4]]
    assert await claim_ids(store, slots={"default": 2}) == [ids[0], ids[1]]
    assert await claim_ids(store, slots={"default": 2}) == [ids[3]]


async def test_queues_are_independent(store: Store, new_job: NewJobFactory) -> None:
    a = await enqueue_one(store, new_job(queue="a", priority=3))
    b = await enqueue_one(store, new_job(queue="b", priority=1))
    assert await claim_ids(store, slots={"a": 5}) == [a]
    assert await claim_ids(store, slots={"a": 5}) == []
    assert await claim_ids(store, slots={"b": 5}) == [b]


async def test_claim_takes_at_most_the_slots_per_queue(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(queue=q) for q in ("a", "b", "c") for _ in range(4)])
    result = await claim(store, slots={"a": 2, "b": 3, "c": 0})
    by_queue = {q: sum(1 for j in result.claimed if j.queue == q) for q in ("a", "b", "c")}
    assert by_queue == {"a": 2, "b": 3, "c": 0}
    counts = {s.name: s.counts for s in await store.queue_stats()}
    assert counts["a"][JobState.RUNNING] == 2
    assert counts["b"][JobState.RUNNING] == 3
    assert counts["c"][JobState.QUEUED] == 4


async def test_claim_marks_the_job_running(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    before = time.time()
    [claimed] = (await claim(store, W1, lease_s=30)).claimed
    job = await get(store, job_id)
    assert claimed == job
    assert job.state is JobState.RUNNING
    assert job.attempt == 1
    assert job.locked_by == W1
    assert job.started_at is not None
    assert before - 1 <= job.started_at <= time.time() + 1
    assert job.lease_expires_at == pytest.approx(job.started_at + 30, abs=1e-3)
    assert await claim_ids(store) == []


# -- several instances -----------------------------------------------------------------------
async def test_concurrent_claims_never_share_a_job(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    results = await store.enqueue([new_job() for _ in range(500)])
    all_ids = {r.id for r in results}

    async def drain(instance: Store, worker_id: str) -> list[int]:
        taken: list[int] = []
        while True:
            batch = await claim_ids(instance, worker_id, slots={"default": 7})
            if not batch:
                return taken
            taken += batch

    a, b = await asyncio.gather(drain(store, W1), drain(peer_store, W2))
    assert len(a) + len(b) == 500
    assert set(a) | set(b) == all_ids
    assert not set(a) & set(b)
    for job in await store.list_jobs(JobFilter(limit=500)):
        assert job.attempt == 1
        assert job.locked_by == (W1 if job.id in set(a) else W2)
