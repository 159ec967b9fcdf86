"""Failed attempts: retries with backoff, exhaustion, Discard, timeouts, bad results."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

import conveyor
from conveyor.engine.executor import RESULT_MAX_BYTES

NO_WAIT = conveyor.Backoff(base=0)
S = conveyor.JobState


class Flaky(Exception):
    pass


async def test_failed_attempts_are_retried_then_completed(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.flaky", max_attempts=3, backoff=NO_WAIT, registry=kinds)
    async def flaky(ctx: conveyor.JobContext, payload: Any) -> str:
        if ctx.attempt < 3:
            raise Flaky(f"attempt {ctx.attempt} went wrong")
        return "third time lucky"

    enqueued = await client.enqueue("t.flaky")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.COMPLETED, 3, "third time lucky")
    assert [(e.attempt, e.type, e.message) for e in job.errors] == [
        (1, "Flaky", "attempt 1 went wrong"),
        (2, "Flaky", "attempt 2 went wrong"),
    ]
    for entry in job.errors:
        assert entry.traceback is not None
        assert "Traceback" in entry.traceback
        assert "in flaky" in entry.traceback
        assert "Flaky: attempt" in entry.traceback
        assert job.created_at <= entry.at <= (job.finished_at or 0)


async def test_retry_waits_for_the_backoff(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.fails", backoff=conveyor.Backoff(base=30, jitter=False), registry=kinds)
    async def fails(ctx: conveyor.JobContext, payload: Any) -> None:
        raise Flaky("no")

    enqueued = await client.enqueue("t.fails")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, len(job.errors)) == (S.QUEUED, 1, 1)
    assert job.locked_by is None
    assert job.run_at == pytest.approx(job.errors[0].at + 30, abs=1)
    stats = {q.name: q for q in await client.queues()}["default"]
    assert stats.scheduled == 1


async def test_backoff_grows_between_attempts(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job(
        "t.fails",
        max_attempts=5,
        backoff=conveyor.Backoff(base=0.05, factor=4, jitter=False),
        registry=kinds,
    )
    async def fails(ctx: conveyor.JobContext, payload: Any) -> None:
        raise Flaky(str(ctx.attempt))

    enqueued = await client.enqueue("t.fails")
    # Burst mode leaves a job that is not due yet: each pass runs one attempt.
    waits: list[float] = []
    for _ in range(3):
        await workers.burst()
        job = await client.get(enqueued.id)
        waits.append(job.run_at - job.errors[-1].at)
        await asyncio.sleep(max(0.0, job.run_at - time.time()) + 0.01)

    # Each wait is the ceiling (no jitter) plus the moment it took to record the failure.
    for wait, ceiling in zip(waits, [0.05, 0.2, 0.8], strict=True):
        assert ceiling <= wait < ceiling + 0.2


async def test_attempts_exhausted_fails_the_job(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    calls: list[int] = []

    @conveyor.job("t.broken", max_attempts=3, backoff=NO_WAIT, registry=kinds)
    async def broken(ctx: conveyor.JobContext, payload: Any) -> None:
        calls.append(ctx.attempt)
        raise ValueError("always")

    enqueued = await client.enqueue("t.broken")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert calls == [1, 2, 3]
    assert (job.state, job.attempt, job.max_attempts) == (S.FAILED, 3, 3)
    assert [(e.attempt, e.type) for e in job.errors] == [(i, "ValueError") for i in (1, 2, 3)]
    assert job.finished_at is not None
    assert job.result is None


async def test_max_attempts_one_means_no_retry(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.broken", backoff=NO_WAIT, registry=kinds)
    async def broken(ctx: conveyor.JobContext, payload: Any) -> None:
        raise ValueError("once")

    enqueued = await client.enqueue("t.broken", max_attempts=1)
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, len(job.errors)) == (S.FAILED, 1, 1)


async def test_sync_handler_failures_are_retried(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.sync", max_attempts=2, backoff=NO_WAIT, registry=kinds)
    def flaky(ctx: conveyor.JobContext, payload: Any) -> int:
        if ctx.attempt == 1:
            raise KeyError("missing")
        return ctx.attempt

    enqueued = await client.enqueue("t.sync")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (S.COMPLETED, 2)
    assert job.errors[0].type == "KeyError"
    assert "in flaky" in (job.errors[0].traceback or "")


async def test_discard_fails_at_once(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.discard", max_attempts=5, backoff=NO_WAIT, registry=kinds)
    async def discard(ctx: conveyor.JobContext, payload: Any) -> None:
        raise conveyor.Discard("the practice no longer exists")

    enqueued = await client.enqueue("t.discard")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.max_attempts) == (S.FAILED, 1, 5)
    [error] = job.errors
    assert (error.type, error.message) == ("Discard", "the practice no longer exists")


async def test_non_retryable_exception_fails_at_once(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    class BadInput(ValueError):
        pass

    @conveyor.job(
        "t.strict", max_attempts=5, backoff=NO_WAIT, non_retryable=[LookupError], registry=kinds
    )
    async def strict(ctx: conveyor.JobContext, payload: str) -> None:
        if payload == "lookup":
            raise KeyError("subclass of a non-retryable type")
        raise BadInput("retryable")

    lookup = await client.enqueue("t.strict", "lookup")
    other = await client.enqueue("t.strict", "other", max_attempts=2)
    await workers.burst()

    job = await client.get(lookup.id)
    assert (job.state, job.attempt, [e.type for e in job.errors]) == (S.FAILED, 1, ["KeyError"])
    job = await client.get(other.id)
    assert (job.state, job.attempt) == (S.FAILED, 2)


async def test_error_without_message_is_named_by_its_type(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.bare", max_attempts=1, registry=kinds)
    async def bare(ctx: conveyor.JobContext, payload: Any) -> None:
        raise RuntimeError

    enqueued = await client.enqueue("t.bare")
    await workers.burst()

    [error] = (await client.get(enqueued.id)).errors
    assert (error.type, error.message) == ("RuntimeError", "RuntimeError")


async def test_result_that_is_not_json_fails_without_retry(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    calls: list[int] = []

    @conveyor.job("t.bad_result", max_attempts=3, backoff=NO_WAIT, registry=kinds)
    async def bad_result(ctx: conveyor.JobContext, payload: Any) -> Any:
        calls.append(ctx.attempt)
        return {"when": object()}

    enqueued = await client.enqueue("t.bad_result")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert calls == [1]
    assert (job.state, job.attempt, job.result) == (S.FAILED, 1, None)
    [error] = job.errors
    assert error.type == "TypeError"
    assert "JSON" in error.message
    assert "t.bad_result" in error.message


async def test_handler_errors_are_not_mistaken_for_a_bad_result(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    import orjson

    @conveyor.job("t.encodes", max_attempts=2, backoff=NO_WAIT, registry=kinds)
    async def encodes(ctx: conveyor.JobContext, payload: Any) -> str:
        if ctx.attempt == 1:
            orjson.dumps({"not json": object()})  # the handler's own bug, on attempt 1
        return "ok"

    enqueued = await client.enqueue("t.encodes")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.COMPLETED, 2, "ok")
    assert job.errors[0].traceback is not None


async def test_a_job_of_a_kind_the_worker_lacks_waits_uncharged(
    store: Any, kinds: conveyor.Registry, workers: Any
) -> None:
    """Before, such a worker claimed the job and burned its attempts with UnknownKind.
    Now it never claims it: the job stays queued, attempt 0, no error, until a worker
    that has the kind runs it as its first attempt."""
    elsewhere = conveyor.Registry()

    @conveyor.job("t.ghost", max_attempts=2, registry=elsewhere)
    async def ghost(ctx: conveyor.JobContext, payload: Any) -> str:
        return "ran"

    @conveyor.job("t.known", registry=kinds)
    async def known(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    producer = conveyor.Client(store, kinds=elsewhere)
    enqueued = await producer.enqueue("t.ghost")
    await workers.burst()  # this worker knows t.known only

    job = await producer.get(enqueued.id)
    assert (job.state, job.attempt, job.errors, job.locked_by) == (S.QUEUED, 0, (), None)
    [stats] = await producer.queues()
    assert stats.unserved_kinds == {"t.ghost": 1}

    knowing = conveyor.Worker(store, workers.make().config, kinds=elsewhere)
    await asyncio.wait_for(knowing.run(burst=True), 10)
    job = await producer.get(enqueued.id)
    assert (job.state, job.attempt, job.result, job.errors) == (S.COMPLETED, 1, "ran", ())


# -- timeouts --------------------------------------------------------------------------------
async def test_timeout_cancels_the_attempt_and_retries(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    seen: list[tuple[int, bool]] = []

    @conveyor.job("t.slow", timeout=0.2, max_attempts=2, backoff=NO_WAIT, registry=kinds)
    async def slow(ctx: conveyor.JobContext, payload: Any) -> str:
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append((ctx.attempt, ctx.cancelled))
                raise
        return "fast enough"

    enqueued = await client.enqueue("t.slow")
    started = time.monotonic()
    await workers.burst()

    assert time.monotonic() - started < 3
    assert seen == [(1, True)]
    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.COMPLETED, 2, "fast enough")
    [error] = job.errors
    assert (error.attempt, error.type) == (1, "TimeoutError")
    assert "timeout of 0.2 s" in error.message


async def test_timeout_on_the_last_attempt_fails_the_job(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.slow", max_attempts=1, registry=kinds)
    async def slow(ctx: conveyor.JobContext, payload: Any) -> None:
        await asyncio.sleep(30)

    enqueued = await client.enqueue("t.slow", timeout=0.1)
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, [e.type for e in job.errors]) == (S.FAILED, ["TimeoutError"])


async def test_sync_handler_past_its_timeout_is_told_and_fails_once_it_returns(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, eventually: Any
) -> None:
    noticed: list[bool] = []

    @conveyor.job("t.sync_slow", max_attempts=1, timeout=0.2, registry=kinds)
    def sync_slow(ctx: conveyor.JobContext, payload: Any) -> str:
        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        noticed.append(ctx.cancelled)
        return "too late"

    enqueued = await client.enqueue("t.sync_slow")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (S.FAILED, None)
    assert [e.type for e in job.errors] == ["TimeoutError"]
    assert noticed == [True]  # recorded only once the thread had returned


async def test_a_timed_out_sync_attempt_keeps_its_slot_and_lease_until_its_thread_returns(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_job: Any
) -> None:
    """Queue limit 1: neither the timed-out job's retry nor the next job starts while its
    thread runs; the next job's clock starts with it."""
    release = threading.Event()
    timed_out = threading.Event()
    lock = threading.Lock()
    active: list[int] = []
    overlaps: list[list[int]] = []
    runs: list[tuple[int, int]] = []

    def enter(ctx: conveyor.JobContext) -> None:
        with lock:
            active.append(ctx.id)
            runs.append((ctx.id, ctx.attempt))
            if len(active) > 1:
                overlaps.append(list(active))

    def leave(ctx: conveyor.JobContext) -> None:
        with lock:
            active.remove(ctx.id)

    @conveyor.job(
        "t.stuck", queue="one", timeout=0.2, max_attempts=2, backoff=NO_WAIT, registry=kinds
    )
    def stuck(ctx: conveyor.JobContext, payload: Any) -> str:
        enter(ctx)
        try:
            if ctx.attempt == 1:
                while not release.wait(0.01):
                    if ctx.cancelled:
                        timed_out.set()  # told, and runs on regardless
            return f"attempt {ctx.attempt}"
        finally:
            leave(ctx)

    @conveyor.job("t.next", queue="one", timeout=0.5, registry=kinds)
    def next_job(ctx: conveyor.JobContext, payload: Any) -> str:
        enter(ctx)
        try:
            time.sleep(0.3)  # within its own timeout, though the first job ran long before
            return "on time"
        finally:
            leave(ctx)

    first = await client.enqueue("t.stuck")
    second = await client.enqueue("t.next")
    workers.start(queues={"one": 1})

    assert await asyncio.to_thread(timed_out.wait, 5)
    running = await wait_job(first.id, lambda j: j.state == S.RUNNING)
    assert running.lease_expires_at is not None
    # The lease keeper renews the lease while the thread runs past its timeout.
    renewed = await wait_job(
        first.id, lambda j: j.lease_expires_at > running.lease_expires_at + 0.2
    )
    # Renewed for the worker's lease (1 s), not longer.
    assert renewed.lease_expires_at <= time.time() + 1.0 + 0.05
    assert (await client.get(second.id)).state == S.QUEUED
    assert runs == [(first.id, 1)]

    release.set()
    done = await wait_job(second.id, lambda j: j.state == S.COMPLETED)
    assert done.result == "on time"
    retried = await wait_job(first.id, lambda j: j.state == S.COMPLETED)
    assert (retried.attempt, retried.result) == (2, "attempt 2")
    assert [(e.attempt, e.type) for e in retried.errors] == [(1, "TimeoutError")]
    assert overlaps == []
    assert sorted(runs) == sorted([(first.id, 1), (second.id, 1), (first.id, 2)])


async def test_handler_raising_timeout_error_itself_is_an_ordinary_failure(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.upstream", max_attempts=2, backoff=NO_WAIT, registry=kinds)
    async def upstream(ctx: conveyor.JobContext, payload: Any) -> str:
        if ctx.attempt == 1:
            raise TimeoutError("upstream API timed out")
        return "ok"

    enqueued = await client.enqueue("t.upstream")
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.result) == (S.COMPLETED, "ok")
    assert job.errors[0].message == "upstream API timed out"
    assert job.errors[0].traceback is not None


# -- output no store can hold ---------------------------------------------------------------
def _returns(value: Any) -> Callable[[], Any]:
    return lambda: value


def _raises() -> Any:
    raise ValueError("a\x00b\ud800c")


BAD_RESULTS = {
    "NUL in a string": (_returns("a\x00b"), "ValueError", "NUL character"),
    "NUL in a key": (_returns({"k\x00": 1}), "ValueError", "NUL character"),
    "NaN": (_returns({"score": float("nan")}), "ValueError", "NaN or Infinity"),
    "Infinity": (_returns([1.0, float("-inf")]), "ValueError", "NaN or Infinity"),
    "lone surrogate": (_returns("\ud800"), "TypeError", "not JSON-serialisable"),
    "too large": (_returns("x" * RESULT_MAX_BYTES), "ValueError", "RESULT_MAX_BYTES"),
    "too deep": (_returns(functools.reduce(lambda v, _: [v], range(300), 0)), "TypeError", "JSON"),
}

GOOD_RESULT = "a\\u0000 is no NUL"
"""A backslash and u0000: looks like a NUL once encoded, and is none."""


async def _one_batch(
    kinds: conveyor.Registry, client: conveyor.Client, bad: Callable[[], Any], **options: Any
) -> tuple[int, list[int]]:
    """Enqueue a job of kind t.bad (``bad()`` makes its result) and three of t.good, all
    finishing together so that their outcomes share an exchange."""
    started: list[int] = []
    together = asyncio.Event()

    async def gather(ctx: conveyor.JobContext) -> None:
        started.append(ctx.id)
        if len(started) >= 4:
            together.set()
        await asyncio.wait_for(together.wait(), 5)

    @conveyor.job("t.bad", backoff=NO_WAIT, registry=kinds, **options)
    async def bad_kind(ctx: conveyor.JobContext, payload: Any) -> Any:
        await gather(ctx)
        return bad()

    @conveyor.job("t.good", registry=kinds)
    async def good_kind(ctx: conveyor.JobContext, payload: Any) -> Any:
        await gather(ctx)
        return GOOD_RESULT

    bad_id = (await client.enqueue("t.bad")).id
    good = [(await client.enqueue("t.good")).id for _ in range(3)]
    return bad_id, good


async def _assert_alive(
    worker: conveyor.Worker, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    """The worker still serves: a new job completes, and its run has not ended."""
    later = await client.enqueue("t.good")
    await wait_state(later.id, S.COMPLETED)
    assert not workers.task(worker).done()


@pytest.mark.parametrize("case", list(BAD_RESULTS))
async def test_a_result_no_store_can_hold_fails_that_job_alone(
    case: str, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    bad, error_type, says = BAD_RESULTS[case]
    bad_id, good = await _one_batch(kinds, client, bad, max_attempts=3)
    worker = workers.start()

    job = await wait_state(bad_id, S.FAILED)
    # Not retried: the same handler would return the same result.
    assert (job.attempt, job.result) == (1, None)
    [error] = job.errors
    assert error.type == error_type
    assert says in error.message
    assert "t.bad" in error.message
    for job_id in good:
        done = await wait_state(job_id, S.COMPLETED)
        assert done.result == GOOD_RESULT
    await _assert_alive(worker, client, workers, wait_state)


async def test_an_error_with_nul_and_surrogates_is_recorded_with_them_replaced(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    bad_id, good = await _one_batch(kinds, client, _raises, max_attempts=1)
    worker = workers.start()

    job = await wait_state(bad_id, S.FAILED)
    [error] = job.errors
    assert (error.type, error.message) == ("ValueError", "a\ufffdb\ufffdc")
    assert error.traceback is not None
    assert "ValueError: a\ufffdb\ufffdc" in error.traceback
    for job_id in good:
        await wait_state(job_id, S.COMPLETED)
    await _assert_alive(worker, client, workers, wait_state)


async def test_a_progress_message_with_nul_is_recorded_with_it_replaced(
    kinds: conveyor.Registry,
    client: conveyor.Client,
    workers: Any,
    wait_state: Any,
    wait_job: Any,
) -> None:
    release = asyncio.Event()

    @conveyor.job("t.reports", registry=kinds)
    async def reports(ctx: conveyor.JobContext, payload: Any) -> str:
        ctx.progress(0.5, "x\x00y\udc80")
        await asyncio.wait_for(release.wait(), 5)
        return "done"

    batch = await _one_batch(kinds, client, _returns("fine"))
    reporting = await client.enqueue("t.reports")
    worker = workers.start()

    job = await wait_job(reporting.id, lambda j: j.progress == 0.5)
    assert job.progress_message == "x\ufffdy\ufffd"
    release.set()
    for job_id in [reporting.id, batch[0], *batch[1]]:
        await wait_state(job_id, S.COMPLETED)
    await _assert_alive(worker, client, workers, wait_state)


REFUSED = "refused by the database"
"""A result every engine check passes, which the test's own constraint makes the database
refuse: the fallback for what no check catches (a database rule, a limit of its own)."""


async def _refuse_results_saying_so(store: Any) -> None:
    """Make ``store``'s database refuse to record a result holding REFUSED, as a database
    rule the engine cannot know of would (the test owns its database)."""
    if store.dialect == "postgresql":
        conn = await asyncpg.connect(store.url)
        try:
            await conn.execute(
                "ALTER TABLE conveyor_jobs ADD CONSTRAINT test_refused"
                f" CHECK (result IS NULL OR result::text NOT LIKE '%{REFUSED}%') NOT VALID"
            )
        finally:
            await conn.close()
        return
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        conn.execute(
            "CREATE TRIGGER test_refused BEFORE UPDATE OF result ON conveyor_jobs"
            f" WHEN new.result LIKE '%{REFUSED}%'"
            " BEGIN SELECT RAISE(ABORT, 'test_refused: this result is refused'); END"
        )
        conn.commit()


async def test_an_outcome_the_database_refuses_fails_that_job_alone(
    store: Any, kinds: conveyor.Registry, client: conveyor.Client, workers: Any, wait_state: Any
) -> None:
    await _refuse_results_saying_so(store)
    bad_id, good = await _one_batch(kinds, client, lambda: REFUSED, max_attempts=1)
    worker = workers.start()

    job = await wait_state(bad_id, S.FAILED)
    [error] = job.errors
    assert (error.type, job.attempt, job.result) == ("DataRejected", 1, None)
    assert "test_refused" in error.message
    for job_id in good:
        await wait_state(job_id, S.COMPLETED)
    await _assert_alive(worker, client, workers, wait_state)


# -- retry by hand ---------------------------------------------------------------------------
async def test_retry_a_failed_job_runs_it_again(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.once", max_attempts=1, registry=kinds)
    async def once(ctx: conveyor.JobContext, payload: Any) -> int:
        if ctx.attempt == 1:
            raise Flaky("first")
        return ctx.attempt

    enqueued = await client.enqueue("t.once")
    await workers.burst()
    assert (await client.get(enqueued.id)).state == S.FAILED

    retried = await client.retry(enqueued.id)
    assert (retried.state, retried.max_attempts, retried.finished_at) == (S.QUEUED, 2, None)
    await workers.burst()

    job = await client.get(enqueued.id)
    assert (job.state, job.attempt, job.result) == (S.COMPLETED, 2, 2)
    assert [e.attempt for e in job.errors] == [1]
