"""The store contract, enqueueing: ids, the fields stored and read back, scheduling, unique keys.

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
    outcome_of,
    settle,
    stats_of,
)

from conveyor.engine import limits
from conveyor.store.base import Store
from conveyor.store.records import (
    Enqueued,
    JobFilter,
    JobState,
    OutcomeKind,
)


# -- schema ----------------------------------------------------------------------------------
async def test_migrate_is_idempotent(store: Store) -> None:
    applied, latest = await store.schema_status()
    assert applied == latest >= 1
    assert await store.migrate() == []
    assert await store.schema_status() == (latest, latest)


# -- enqueue ---------------------------------------------------------------------------------
async def test_enqueue_one(store: Store, new_job: NewJobFactory) -> None:
    before = time.time()
    [enqueued] = await store.enqueue([new_job(payload={"x": 1})])
    after = time.time()
    assert enqueued.created
    job = await get(store, enqueued.id)
    assert job.state is JobState.QUEUED
    assert (job.kind, job.queue, job.priority) == ("test.noop", "default", 2)
    assert job.payload == {"x": 1}
    assert job.attempt == 0
    assert job.max_attempts == 3
    assert job.timeout_s is None
    assert job.result is None
    assert job.errors == ()
    assert job.locked_by is None
    assert job.started_at is None
    assert job.finished_at is None
    assert not job.cancel_requested
    assert before - 1 <= job.created_at <= after + 1
    assert job.run_at == pytest.approx(job.created_at, abs=1e-3)


async def test_enqueue_many_returns_ids_in_input_order(
    store: Store, new_job: NewJobFactory
) -> None:
    results = await store.enqueue([new_job(payload={"i": i}) for i in range(10)])
    assert all(r.created for r in results)
    assert len({r.id for r in results}) == 10
    for i, r in enumerate(results):
        assert (await get(store, r.id)).payload == {"i": i}


async def test_empty_enqueue(store: Store) -> None:
    assert await store.enqueue([]) == []


async def test_payload_and_meta_round_trip(store: Store, new_job: NewJobFactory) -> None:
    payload = {
        "text": "héllo wörld — 你好 🚀",
        "nested": {"list": [1, 2.5, None, True, {"deep": ["a", {"b": []}]}], "empty": {}},
        "big": 2**53,
        "neg": -1.25,
    }
    meta = {"trace": "abc", "ünïcode": ["✓"], "n": {"m": None}}
    job_id = await enqueue_one(
        store,
        new_job(payload=payload, meta=meta, timeout_s=12.5, max_attempts=7, kind="k.ind"),
    )
    job = await get(store, job_id)
    assert job.payload == payload
    assert job.meta == meta
    assert (job.timeout_s, job.max_attempts, job.kind) == (12.5, 7, "k.ind")


async def test_payload_may_be_any_json_value(store: Store, new_job: NewJobFactory) -> None:
    payloads: list[object] = [[1, "two"], "text", 3, None]
    results = await store.enqueue([new_job(payload=p) for p in payloads])
    assert [(await get(store, r.id)).payload for r in results] == payloads


async def test_every_value_the_limits_accept_is_stored_and_read_back(
    store: Store, new_job: NewJobFactory
) -> None:
    """The edges of conveyor.engine.limits: what the Client lets through, each store keeps
    and returns as it was, and lists."""
    payload = {
        "deep": nested_lists(limits.MAX_DEPTH - 1),
        "ints": [limits.MIN_JSON_INT, limits.MAX_JSON_INT, 0],
        "floats": [5e-324, 1.7976931348623157e308, -0.5],
        "text": "é\u2028\U0001f680\x01",
    }
    latest = time.time() + limits.MAX_DELAY_S
    ids = [
        await enqueue_one(store, new_job(payload=payload, run_at=latest)),
        await enqueue_one(store, new_job(run_at=limits.MIN_RUN_AT)),
        await enqueue_one(store, new_job(delay_s=limits.MAX_DELAY_S)),
        await enqueue_one(store, new_job(max_attempts=limits.MAX_ATTEMPTS)),
    ]
    first = await get(store, ids[0])
    assert first.payload == payload
    assert first.run_at == pytest.approx(latest, abs=1e-3)
    assert (await get(store, ids[1])).run_at == limits.MIN_RUN_AT
    assert (await get(store, ids[2])).run_at == pytest.approx(latest, abs=5)
    assert sorted(j.id for j in await store.list_jobs(JobFilter())) == sorted(ids)


def nested_lists(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_bulk_enqueue_5000(store: Store, new_job: NewJobFactory) -> None:
    results = await store.enqueue([new_job(payload={"i": i}) for i in range(5000)])
    assert len(results) == 5000
    assert all(r.created for r in results)
    assert len({r.id for r in results}) == 5000
    for i in (0, 1234, 4999):
        assert (await get(store, results[i].id)).payload == {"i": i}
    assert (await stats_of(store)).counts[JobState.QUEUED] == 5000


@pytest.mark.parametrize("scheduled", [False, True], ids=["all-due-now", "some-scheduled"])
async def test_bulk_enqueue_stores_every_field(
    store: Store, new_job: NewJobFactory, scheduled: bool
) -> None:
    """A batch large enough for a store's bulk path keeps each job's own values; with
    ``scheduled`` some jobs also carry a delay, a run_at or meta."""
    in_a_minute = time.time() + 60
    jobs = [
        new_job(
            kind=f"k{i % 2}",
            queue=f"q{i % 3}",
            payload={"i": i},
            priority=1 + i % 10,
            max_attempts=1 + i % 5,
            timeout_s=2.5 if i % 2 else None,
            tenant_id=f"t{i % 4}",
        )
        for i in range(200)
    ]
    if scheduled:
        jobs[50].delay_s = 30.0
        jobs[60].run_at = in_a_minute
        jobs[70].meta = {"trace": "abc"}
    before = time.time()
    results = await store.enqueue(jobs)
    after = time.time()
    assert [r.created for r in results] == [True] * 200
    for new, result in zip(jobs, results, strict=True):
        job = await get(store, result.id)
        assert (job.kind, job.queue, job.payload, job.priority) == (
            new.kind,
            new.queue,
            new.payload,
            new.priority,
        )
        assert (job.max_attempts, job.timeout_s, job.tenant_id, job.meta) == (
            new.max_attempts,
            new.timeout_s,
            new.tenant_id,
            new.meta,
        )
        assert (job.state, job.attempt, job.errors) == (JobState.QUEUED, 0, ())
        assert before - 1 <= job.created_at <= after + 1
        expected_run_at = new.run_at or job.created_at + new.delay_s
        assert job.run_at == pytest.approx(expected_run_at, abs=1e-3)
    scheduled_jobs = sum(stats.scheduled for stats in await store.queue_stats())
    assert scheduled_jobs == (2 if scheduled else 0)


# -- scheduling ------------------------------------------------------------------------------
async def test_delay_s_schedules_in_the_future(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job(delay_s=0.3))
    job = await get(store, job_id)
    assert job.run_at == pytest.approx(job.created_at + 0.3, abs=1e-3)

    result = await claim(store)
    assert result.claimed == ()
    assert result.next_run_at == pytest.approx(job.run_at, abs=1e-3)
    stats = await stats_of(store)
    assert (stats.counts[JobState.QUEUED], stats.scheduled) == (1, 1)

    await asyncio.sleep(max(0.0, job.run_at - time.time()) + 0.02)
    assert await claim_ids(store) == [job_id]


async def test_absolute_run_at(store: Store, new_job: NewJobFactory) -> None:
    run_at = time.time() + 0.3
    later = await enqueue_one(store, new_job(run_at=run_at))
    past = await enqueue_one(store, new_job(run_at=time.time() - 10))
    assert (await get(store, later)).run_at == pytest.approx(run_at, abs=1e-3)

    result = await claim(store)
    assert [j.id for j in result.claimed] == [past]
    assert result.next_run_at == pytest.approx(run_at, abs=1e-3)

    await asyncio.sleep(max(0.0, run_at - time.time()) + 0.02)
    result = await claim(store)
    assert [j.id for j in result.claimed] == [later]
    assert result.next_run_at is None


# -- unique keys -----------------------------------------------------------------------------
async def test_unique_key_matches_queued_job(store: Store, new_job: NewJobFactory) -> None:
    first = await enqueue_one(store, new_job(unique_key="k", payload={"n": 1}))
    [again] = await store.enqueue([new_job(unique_key="k", payload={"n": 2})])
    assert again == Enqueued(first, created=False)
    assert (await get(store, first)).payload == {"n": 1}
    assert len(await store.list_jobs(JobFilter())) == 1


async def test_unique_key_matches_running_job(store: Store, new_job: NewJobFactory) -> None:
    first = await enqueue_one(store, new_job(unique_key="k"))
    await claim_one(store)
    [again] = await store.enqueue([new_job(unique_key="k")])
    assert again == Enqueued(first, created=False)
    assert len(await store.list_jobs(JobFilter())) == 1


async def test_unique_key_duplicates_in_one_call(store: Store, new_job: NewJobFactory) -> None:
    results = await store.enqueue(
        [
            new_job(unique_key="a", payload={"i": 0}),
            new_job(payload={"i": 1}),
            new_job(unique_key="a", payload={"i": 2}),
            new_job(unique_key="b", payload={"i": 3}),
            new_job(unique_key="b", payload={"i": 4}),
            new_job(payload={"i": 5}),
        ]
    )
    assert [r.created for r in results] == [True, True, False, True, False, True]
    assert results[2].id == results[0].id
    assert results[4].id == results[3].id
    for i in (0, 1, 3, 5):
        assert (await get(store, results[i].id)).payload == {"i": i}
    assert len(await store.list_jobs(JobFilter())) == 4


async def test_unique_key_is_per_tenant(store: Store, new_job: NewJobFactory) -> None:
    a = await enqueue_one(store, new_job(unique_key="k", tenant_id="t1"))
    [b] = await store.enqueue([new_job(unique_key="k", tenant_id="t2")])
    assert b.created
    assert b.id != a
    assert (await get(store, b.id)).tenant_id == "t2"
    [c] = await store.enqueue([new_job(unique_key="k", tenant_id="t1")])
    assert c == Enqueued(a, created=False)


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled", "cancelled-running"])
async def test_unique_key_is_free_once_the_job_finished(
    store: Store, new_job: NewJobFactory, end: str
) -> None:
    first = await enqueue_one(store, new_job(unique_key="k"))
    if end == "cancelled":
        await store.cancel(first)
    else:
        job = await claim_one(store)
        if end == "completed":
            outcome = completed(job)
        elif end == "failed":
            outcome = failed(job)
        else:
            await store.cancel(first)
            outcome = outcome_of(OutcomeKind.CANCELLED, job)
        assert await settle(store, W1, outcome) == (True,)
    assert (await get(store, first)).state.finished

    [second] = await store.enqueue([new_job(unique_key="k")])
    assert second.created
    assert second.id != first
    assert (await get(store, second.id)).state is JobState.QUEUED
