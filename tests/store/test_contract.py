"""The store contract: one behavioural suite that every store kind must pass.

Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.engine import limits
from conveyor.store.base import (
    CancelRequested,
    ConflictError,
    DataRejected,
    JobsAvailable,
    Notice,
    Store,
    StoreError,
)
from conveyor.store.records import (
    ClaimRequest,
    Enqueued,
    ErrorEntry,
    Job,
    JobFilter,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
    Progress,
    QueueStats,
    SettleResult,
    WorkerInfo,
)
from conveyor.store.sqlite import SqliteStore

NewJobFactory = Callable[..., NewJob]

W1 = "worker-1"
W2 = "worker-2"
NOOP = "test.noop"
"""The kind of the ``new_job`` fixture's jobs, which the claims below ask for."""


# -- helpers ---------------------------------------------------------------------------------
async def claim(
    store: Store,
    worker_id: str = W1,
    slots: dict[str, int] | None = None,
    lease_s: float = 30.0,
    kinds: tuple[str, ...] = (NOOP,),
) -> SettleResult:
    """Claim only (no outcomes, no progress), jobs of ``kinds``."""
    request = ClaimRequest(
        worker_id, {"default": 10} if slots is None else slots, lease_s, kinds=kinds
    )
    return await store.settle_and_claim([], [], worker_id, request)


async def claim_ids(
    store: Store, worker_id: str = W1, slots: dict[str, int] | None = None
) -> list[int]:
    return [job.id for job in (await claim(store, worker_id, slots)).claimed]


async def claim_ids_of(
    store: Store, worker_id: str, kinds: tuple[str, ...], n: int = 5
) -> list[int]:
    """Claim up to ``n`` jobs of ``kinds`` from the default queue; their ids in order."""
    result = await claim(store, worker_id, {"default": n}, kinds=kinds)
    return [job.id for job in result.claimed]


async def settle(store: Store, worker_id: str, *outcomes: Outcome) -> tuple[bool, ...]:
    """Report outcomes without claiming; returns the applied flags."""
    result = await store.settle_and_claim(outcomes, [], worker_id, None)
    assert result.claimed == ()
    return result.applied


async def enqueue_one(store: Store, job: NewJob) -> int:
    [enqueued] = await store.enqueue([job])
    assert enqueued.created
    return enqueued.id


async def get(store: Store, job_id: int) -> Job:
    job = await store.get_job(job_id)
    assert job is not None, f"job {job_id} is missing"
    return job


async def stats_of(store: Store, queue: str = "default") -> QueueStats:
    for stats in await store.queue_stats():
        if stats.name == queue:
            return stats
    raise AssertionError(f"no statistics for queue {queue!r}")


def error(attempt: int, message: str = "boom") -> ErrorEntry:
    return ErrorEntry(
        at=time.time(),
        attempt=attempt,
        type="ValueError",
        message=message,
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom',
    )


def completed(job: Job, result: object = None) -> Outcome:
    return Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result=result)


def failed(job: Job, message: str = "boom") -> Outcome:
    return Outcome(
        job.id, job.attempt, OutcomeKind.FAILED, job.queue, error=error(job.attempt, message)
    )


def retried(job: Job, retry_in_s: float) -> Outcome:
    return Outcome(
        job.id,
        job.attempt,
        OutcomeKind.RETRY,
        job.queue,
        error=error(job.attempt),
        retry_in_s=retry_in_s,
    )


def outcome_of(kind: OutcomeKind, job: Job) -> Outcome:
    """A well-formed outcome of ``kind`` for ``job``'s current attempt."""
    err = error(job.attempt) if kind in (OutcomeKind.RETRY, OutcomeKind.FAILED) else None
    result = {"ok": True} if kind is OutcomeKind.COMPLETED else None
    return Outcome(job.id, job.attempt, kind, job.queue, result=result, error=err)


async def claim_one(
    store: Store, worker_id: str = W1, lease_s: float = 30.0, kinds: tuple[str, ...] = (NOOP,)
) -> Job:
    result = await claim(store, worker_id, {"default": 1}, lease_s, kinds)
    assert len(result.claimed) == 1
    return result.claimed[0]


async def wait_until(predicate: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


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
    assert job.run_at == pytest.approx(job.created_at)


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
    assert first.run_at == pytest.approx(latest)
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
    assert job.run_at == pytest.approx(job.created_at + 0.3)

    result = await claim(store)
    assert result.claimed == ()
    assert result.next_run_at == pytest.approx(job.run_at)
    stats = await stats_of(store)
    assert (stats.counts[JobState.QUEUED], stats.scheduled) == (1, 1)

    await asyncio.sleep(max(0.0, job.run_at - time.time()) + 0.02)
    assert await claim_ids(store) == [job_id]


async def test_absolute_run_at(store: Store, new_job: NewJobFactory) -> None:
    run_at = time.time() + 0.3
    later = await enqueue_one(store, new_job(run_at=run_at))
    past = await enqueue_one(store, new_job(run_at=time.time() - 10))
    assert (await get(store, later)).run_at == pytest.approx(run_at)

    result = await claim(store)
    assert [j.id for j in result.claimed] == [past]
    assert result.next_run_at == pytest.approx(run_at)

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
    assert job.lease_expires_at == pytest.approx(job.started_at + 30)
    assert await claim_ids(store) == []


# -- outcomes --------------------------------------------------------------------------------
async def test_completed(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    result = {"url": "https://example.com/ä.png", "sizes": [1, 2]}
    assert await settle(store, W1, completed(job, result)) == (True,)
    done = await get(store, job_id)
    assert done.state is JobState.COMPLETED
    assert done.result == result
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.finished_at >= done.started_at
    assert done.lease_expires_at is None
    assert done.errors == ()


async def test_retry_outcome(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    outcome = retried(job, retry_in_s=0.3)
    before = time.time()
    assert await settle(store, W1, outcome) == (True,)
    again = await get(store, job_id)
    assert again.state is JobState.QUEUED
    assert again.attempt == 1
    assert again.locked_by is None
    assert again.lease_expires_at is None
    assert again.finished_at is None
    assert again.run_at >= before + 0.3 - 0.05
    assert again.errors == (outcome.error,)

    result = await claim(store)
    assert result.claimed == ()
    assert result.next_run_at == pytest.approx(again.run_at)
    await asyncio.sleep(max(0.0, again.run_at - time.time()) + 0.02)
    [second] = (await claim(store)).claimed
    assert (second.id, second.attempt) == (job_id, 2)


async def test_errors_accumulate_one_entry_per_attempt(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job(max_attempts=2))
    first = await claim_one(store)
    retry = retried(first, 0.0)
    assert await settle(store, W1, retry) == (True,)
    second = await claim_one(store)
    fail = failed(second, "second")
    assert await settle(store, W1, fail) == (True,)
    job = await get(store, job_id)
    assert job.errors == (retry.error, fail.error)
    assert [e.attempt for e in job.errors] == [1, 2]


async def test_failed_outcome(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    outcome = failed(job)
    assert await settle(store, W1, outcome) == (True,)
    done = await get(store, job_id)
    assert done.state is JobState.FAILED
    assert done.finished_at is not None
    assert done.errors == (outcome.error,)
    assert outcome.error is not None
    entry = done.errors[0]
    assert (entry.attempt, entry.type, entry.message) == (1, "ValueError", "boom")
    assert entry.traceback is not None
    assert entry.traceback.startswith("Traceback")
    assert entry.at == pytest.approx(outcome.error.at)


async def test_cancelled_outcome(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.cancel(job_id)
    assert await settle(store, W1, outcome_of(OutcomeKind.CANCELLED, job)) == (True,)
    done = await get(store, job_id)
    assert done.state is JobState.CANCELLED
    assert done.finished_at is not None


async def test_released_job_keeps_its_place_and_attempt(
    store: Store, new_job: NewJobFactory
) -> None:
    first = await enqueue_one(store, new_job())
    await enqueue_one(store, new_job())
    job = await claim_one(store)
    assert job.id == first
    assert await settle(store, W1, outcome_of(OutcomeKind.RELEASED, job)) == (True,)
    released = await get(store, first)
    assert released.state is JobState.QUEUED
    assert released.attempt == 0
    assert released.locked_by is None
    assert released.errors == ()
    again = await claim_one(store, W2)
    assert (again.id, again.attempt, again.locked_by) == (first, 1, W2)


async def test_settle_and_claim_in_one_call(store: Store, new_job: NewJobFactory) -> None:
    a = await enqueue_one(store, new_job())
    b = await enqueue_one(store, new_job())
    job = await claim_one(store)
    assert job.id == a
    result = await store.settle_and_claim(
        [completed(job, 1)], [], W1, ClaimRequest(W1, {"default": 5}, 30.0, kinds=(NOOP,))
    )
    assert result.applied == (True,)
    assert [j.id for j in result.claimed] == [b]
    assert (await get(store, a)).state is JobState.COMPLETED


async def test_applied_flags_follow_outcome_order(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(), new_job()])
    a, b = (await claim(store, slots={"default": 2})).claimed
    stale = Outcome(a.id, a.attempt + 5, OutcomeKind.COMPLETED, "default")
    applied = await settle(store, W1, stale, completed(b), completed(a))
    assert applied == (False, True, True)


# -- guards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(OutcomeKind))
async def test_outcome_from_another_worker_is_ignored(
    store: Store, new_job: NewJobFactory, kind: OutcomeKind
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store, W1)
    before = await get(store, job_id)
    assert await settle(store, W2, outcome_of(kind, job)) == (False,)
    assert await get(store, job_id) == before


@pytest.mark.parametrize("kind", list(OutcomeKind))
async def test_outcome_for_another_attempt_is_ignored(
    store: Store, new_job: NewJobFactory, kind: OutcomeKind
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store, W1)
    before = await get(store, job_id)
    stale = outcome_of(kind, job)
    for attempt in (job.attempt - 1, job.attempt + 1):
        wrong = Outcome(stale.job_id, attempt, stale.kind, stale.queue, stale.result, stale.error)
        assert await settle(store, W1, wrong) == (False,)
    assert await get(store, job_id) == before


@pytest.mark.parametrize("kind", list(OutcomeKind))
async def test_outcome_for_a_finished_job_is_ignored(
    store: Store, new_job: NewJobFactory, kind: OutcomeKind
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store, W1)
    assert await settle(store, W1, completed(job, "first")) == (True,)
    before = await get(store, job_id)
    assert await settle(store, W1, outcome_of(kind, job)) == (False,)
    assert await get(store, job_id) == before


async def test_outcome_for_a_queued_or_unknown_job_is_ignored(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    before = await get(store, job_id)
    fake = Outcome(job_id, 0, OutcomeKind.COMPLETED, "default", result=1)
    assert await settle(store, W1, fake) == (False,)
    unknown = Outcome(job_id + 1000, 1, OutcomeKind.COMPLETED, "default", result=1)
    assert await settle(store, W1, unknown) == (False,)
    assert await get(store, job_id) == before
    assert await store.get_job(job_id + 1000) is None


async def test_late_report_after_rescue_never_overwrites(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    old = await claim_one(store, W1, lease_s=0.05)
    await asyncio.sleep(0.1)
    assert (await store.rescue()).requeued == (job_id,)

    rescued = await get(store, job_id)
    assert await settle(store, W1, completed(old, "late")) == (False,)
    assert await get(store, job_id) == rescued

    new = await claim_one(store, W2)
    assert new.attempt == 2
    running = await get(store, job_id)
    late = [
        (W1, completed(old, "late")),  # old worker, old attempt
        (W1, completed(new, "late")),  # old worker, current attempt
        (W2, completed(old, "late")),  # current worker, old attempt
        (W1, outcome_of(OutcomeKind.RELEASED, old)),
        (W1, failed(old)),
    ]
    for worker_id, outcome in late:
        assert await settle(store, worker_id, outcome) == (False,)
    assert await get(store, job_id) == running

    assert await settle(store, W2, completed(new, "fresh")) == (True,)
    done = await get(store, job_id)
    assert (done.state, done.result) == (JobState.COMPLETED, "fresh")


async def test_running_job_with_cancel_request_can_still_complete(
    store: Store, new_job: NewJobFactory
) -> None:
    """A cancel of a running job is a request: until the worker stops the job, the job is
    still the worker's, and a completion that beat the cancel is recorded."""
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    requested = await store.cancel(job_id)
    assert requested is not None
    assert (requested.state, requested.cancel_requested) == (JobState.RUNNING, True)
    assert await settle(store, W1, completed(job, "done")) == (True,)
    done = await get(store, job_id)
    assert (done.state, done.result) == (JobState.COMPLETED, "done")


# -- progress --------------------------------------------------------------------------------
async def test_progress_is_recorded_for_the_owner(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.settle_and_claim([], [Progress(job_id, job.attempt, 0.25, "quarter")], W1, None)
    current = await get(store, job_id)
    assert (current.progress, current.progress_message) == (0.25, "quarter")


async def test_progress_is_guarded(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.settle_and_claim([], [Progress(job_id, job.attempt, 0.5, "half")], W1, None)
    before = await get(store, job_id)
    stale = [
        (W2, Progress(job_id, job.attempt, 0.9, "other worker")),
        (W1, Progress(job_id, job.attempt + 1, 0.9, "other attempt")),
    ]
    for worker_id, progress in stale:
        await store.settle_and_claim([], [progress], worker_id, None)
    assert await get(store, job_id) == before

    assert await settle(store, W1, completed(job)) == (True,)
    finished = await get(store, job_id)
    await store.settle_and_claim([], [Progress(job_id, job.attempt, 0.1, "late")], W1, None)
    assert await get(store, job_id) == finished


# -- data the database refuses ----------------------------------------------------------------
def _refused_reports(store: Store, job: Job) -> list[tuple[str, list[Outcome], list[Progress]]]:
    """Reports of ``job`` that pass no engine check and that ``store``'s database refuses."""
    surrogate = Outcome(
        job.id, job.attempt, OutcomeKind.FAILED, job.queue, error=error(job.attempt, "\ud800")
    )
    cases = [
        ("lone surrogate in an error", [surrogate], []),
        ("lone surrogate in progress", [], [Progress(job.id, job.attempt, 0.5, "\udfff")]),
    ]
    if store.dialect == "postgresql":
        nul = '{"k": "\\u0000"}'
        cases += [
            (
                "NUL in result JSON",
                [Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result_json=nul)],
                [],
            ),
            ("NUL in progress", [], [Progress(job.id, job.attempt, 0.5, "x\x00y")]),
        ]
    return cases


async def test_refused_data_fails_the_whole_exchange_and_nothing_else(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job() for _ in range(2)])
    good, bad = (await claim(store, W1, {"default": 2})).claimed
    for case, outcomes, progress in _refused_reports(store, bad):
        waiting = await enqueue_one(store, new_job())
        with pytest.raises(DataRejected):
            await store.settle_and_claim(
                [completed(good, "fine"), *outcomes],
                progress,
                W1,
                ClaimRequest(W1, {"default": 1}, 30.0, kinds=(NOOP,)),
            )
        # One statement: the good outcome was not recorded and nothing was claimed.
        assert (await get(store, good.id)).state is JobState.RUNNING, case
        assert (await get(store, waiting)).state is JobState.QUEUED, case
        assert (await get(store, bad.id)).state is JobState.RUNNING, case
        # The store is still usable, and the good outcome goes through alone.
        claimed = await claim_ids(store, W2, {"default": 1})
        assert claimed == [waiting], case
        assert await settle(store, W2, completed(await get(store, waiting))) == (True,)
    assert await settle(store, W1, completed(good, "fine"), failed(bad, "plain")) == (True, True)
    assert (await get(store, good.id)).result == "fine"
    assert (await get(store, bad.id)).state is JobState.FAILED


async def test_a_result_encoded_by_the_engine_is_stored_as_given(
    store: Store, new_job: NewJobFactory
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    outcome = Outcome(
        job_id, job.attempt, OutcomeKind.COMPLETED, job.queue, {"a": 1}, result_json='{"a":1}'
    )
    assert await settle(store, W1, outcome) == (True,)
    assert (await get(store, job_id)).result == {"a": 1}


@pytest.mark.parametrize(
    "kind", [OutcomeKind.COMPLETED, OutcomeKind.RETRY, OutcomeKind.FAILED, OutcomeKind.CANCELLED]
)
async def test_a_report_that_rides_with_its_outcome_is_recorded(
    store: Store, new_job: NewJobFactory, kind: OutcomeKind
) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    await store.settle_and_claim([], [Progress(job_id, job.attempt, 0.5, "half")], W1, None)
    last = Progress(job_id, job.attempt, 0.75, "last words")
    result = await store.settle_and_claim([outcome_of(kind, job)], [last], W1, None)
    assert result.applied == (True,)
    finished = await get(store, job_id)
    assert finished.progress_message == "last words"
    assert finished.progress == (1.0 if kind is OutcomeKind.COMPLETED else 0.75)


async def test_a_released_job_forgets_its_progress(store: Store, new_job: NewJobFactory) -> None:
    job_id = await enqueue_one(store, new_job())
    job = await claim_one(store)
    report = Progress(job_id, job.attempt, 0.5, "half")
    await store.settle_and_claim([outcome_of(OutcomeKind.RELEASED, job)], [report], W1, None)
    released = await get(store, job_id)
    assert (released.state, released.progress, released.progress_message) == (
        JobState.QUEUED,
        None,
        None,
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
    status = await store.heartbeat(W1, {job_id: job.attempt}, 60.0, renew=True)
    assert status.held == {job_id}
    renewed = await get(store, job_id)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at >= job.lease_expires_at + 58

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


# -- workers ---------------------------------------------------------------------------------
async def test_register_list_unregister_workers(store: Store) -> None:
    before = time.time()
    await store.register_worker(WorkerInfo("wa", "host-a", 11, {"default": 4}), lease_s=30)
    await store.register_worker(
        WorkerInfo("wb", "host-b", 22, {"q": 1}, kinds=("a.b", "c")), lease_s=30
    )
    workers = {w.id: w for w in await store.list_workers()}
    assert workers["wb"].kinds == ("a.b", "c")
    assert workers["wb"].serves("q", "c")
    assert not workers["wb"].serves("q", "d")
    assert not workers["wb"].serves("default", "c")
    assert set(workers) == {"wa", "wb"}
    wa = workers["wa"]
    assert (wa.hostname, wa.pid, wa.queues, wa.kinds) == ("host-a", 11, {"default": 4}, ())
    assert before - 1 <= wa.started_at <= wa.last_seen_at <= time.time() + 1
    assert wa.expires_at == pytest.approx(wa.last_seen_at + 30)

    await store.unregister_worker("wa")
    assert [w.id for w in await store.list_workers()] == ["wb"]
    await store.unregister_worker("wa")  # twice is fine
    await store.unregister_worker("never-registered")


async def test_heartbeat_renews_the_worker(store: Store) -> None:
    await store.register_worker(WorkerInfo("wa", "h", 1, {"default": 1}), lease_s=0.2)
    await store.heartbeat("wa", {}, 30.0, renew=True)
    await asyncio.sleep(0.25)
    [worker] = await store.list_workers()
    assert worker.expires_at >= worker.last_seen_at + 29


async def test_expired_worker_is_hidden_and_forgotten(store: Store) -> None:
    await store.register_worker(WorkerInfo("dead", "h", 1, {"default": 1}), lease_s=0.01)
    await store.register_worker(WorkerInfo("alive", "h", 2, {"default": 1}), lease_s=30)
    await asyncio.sleep(0.05)
    assert [w.id for w in await store.list_workers()] == ["alive"]
    await store.rescue()
    # Forgotten: a late heartbeat cannot bring the dead registration back.
    await store.heartbeat("dead", {}, 30.0, renew=True)
    assert [w.id for w in await store.list_workers()] == ["alive"]


# -- listing ---------------------------------------------------------------------------------
async def test_list_jobs_filters_and_pages(store: Store, new_job: NewJobFactory) -> None:
    ids = [
        r.id
        for r in await store.enqueue(
            [
                new_job(queue=q, kind=k, tenant_id=t)
                for q, k, t in [
                    ("a", "k1", "t1"),
                    ("b", "k1", "t1"),
                    ("a", "k2", "t2"),
                    ("a", "k1", "t2"),
                ]
            ]
        )
    ]
    assert [j.id for j in await store.list_jobs(JobFilter())] == ids[::-1]
    assert [j.id for j in await store.list_jobs(JobFilter(queue="a"))] == [ids[3], ids[2], ids[0]]
    assert [j.id for j in await store.list_jobs(JobFilter(kind="k2"))] == [ids[2]]
    assert [j.id for j in await store.list_jobs(JobFilter(tenant_id="t1"))] == [ids[1], ids[0]]
    page1 = await store.list_jobs(JobFilter(limit=3))
    page2 = await store.list_jobs(JobFilter(limit=3, before_id=page1[-1].id))
    assert [j.id for j in page1 + page2] == ids[::-1]
    await claim(store, slots={"b": 1}, kinds=("k1",))
    running = await store.list_jobs(JobFilter(state=JobState.RUNNING))
    assert [j.id for j in running] == [ids[1]]


async def test_list_jobs_filters_by_creation_time(store: Store, new_job: NewJobFactory) -> None:
    [first] = await store.enqueue([new_job()])
    created = (await store.get_job(first.id)).created_at  # type: ignore[union-attr]
    [second] = await store.enqueue([new_job()])
    later = (await store.get_job(second.id)).created_at  # type: ignore[union-attr]
    everything = await store.list_jobs(JobFilter(created_after=created))
    assert [j.id for j in everything] == [second.id, first.id]
    assert await store.list_jobs(JobFilter(created_after=later + 60)) == []
    before = await store.list_jobs(JobFilter(created_before=later + 60, created_after=created))
    assert len(before) == 2
    assert await store.list_jobs(JobFilter(created_before=created)) == []


# -- notices ---------------------------------------------------------------------------------
async def test_listener_hears_enqueue_until_removed(store: Store, new_job: NewJobFactory) -> None:
    notices: list[Notice] = []
    remove = store.add_listener(notices.append)
    await enqueue_one(store, new_job(queue="mail"))
    await wait_until(lambda: JobsAvailable(frozenset({"mail"})) in notices)

    remove()
    await asyncio.sleep(0.05)
    heard = len(notices)
    await enqueue_one(store, new_job(queue="mail"))
    await asyncio.sleep(0.1)
    assert len(notices) == heard
    remove()  # twice is fine


async def test_requeueing_outcomes_publish_jobs_available(
    store: Store, new_job: NewJobFactory
) -> None:
    await enqueue_one(store, new_job())
    job = await claim_one(store)
    notices: list[Notice] = []
    store.add_listener(notices.append)
    assert await settle(store, W1, outcome_of(OutcomeKind.RELEASED, job)) == (True,)
    await wait_until(
        lambda: any(
            isinstance(n, JobsAvailable) and (n.queues is None or "default" in n.queues)
            for n in notices
        )
    )


async def test_another_instance_hears_enqueue(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    if store.dialect != "sqlite":
        pytest.skip("JobsAvailable(None) from another instance is SQLite's data_version poll")
    notices: list[Notice] = []
    peer_store.add_listener(notices.append)
    await enqueue_one(store, new_job())
    await wait_until(lambda: JobsAvailable(None) in notices, within=1.0)


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


# -- connection errors -----------------------------------------------------------------------
async def test_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/folder/t.db"
    store = SqliteStore(url)
    with pytest.raises(StoreError, match="no/such/folder"):
        await store.open()
    await store.close()


async def test_missing_folder_error_names_the_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/t.db"
    store = SqliteStore(url)
    with pytest.raises(StoreError) as excinfo:
        await store.open()
    assert url in str(excinfo.value)


@pytest.mark.parametrize(
    "url", ["postgresql://user@localhost/db", "sqlite://host/t.db", "sqlite:///:memory:"]
)
async def test_unusable_url_is_a_store_error(url: str) -> None:
    async def open_store() -> None:
        store = SqliteStore(url)
        await store.open()
        await store.close()

    with pytest.raises(StoreError, match=re.escape(url)):
        await open_store()
