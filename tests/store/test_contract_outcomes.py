"""The store contract, settling: outcomes and progress, their guards, data the database refuses.

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
    NOOP,
    W1,
    W2,
    NewJobFactory,
    claim,
    claim_ids,
    claim_one,
    completed,
    enqueue_one,
    error,
    failed,
    get,
    outcome_of,
    retried,
    settle,
)

from conveyor.store.base import (
    DataRejected,
    Store,
)
from conveyor.store.records import (
    ClaimRequest,
    Job,
    JobState,
    Outcome,
    OutcomeKind,
    Progress,
)


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
    after = time.time()
    again = await get(store, job_id)
    assert again.state is JobState.QUEUED
    assert again.attempt == 1
    assert again.locked_by is None
    assert again.lease_expires_at is None
    assert again.finished_at is None
    assert again.run_at >= before + 0.3 - 0.05
    assert again.run_at <= after + 0.3 + 0.05
    assert again.errors == (outcome.error,)

    result = await claim(store)
    assert result.claimed == ()
    assert result.next_run_at == pytest.approx(again.run_at, abs=1e-3)
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
    assert entry.at == pytest.approx(outcome.error.at, abs=1e-3)


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
