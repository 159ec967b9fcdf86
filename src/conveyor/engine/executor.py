"""Run one attempt of one job and say how it ended.

The executor knows nothing of the database: it turns a handler's return, exception,
timeout or cancellation into an :class:`Outcome` that the worker records.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import time
import traceback
from concurrent.futures import Executor
from typing import Any

import orjson

from conveyor.engine.context import JobContext
from conveyor.engine.errors import Discard, InvalidJob
from conveyor.engine.kinds import Kind
from conveyor.store.records import ErrorEntry, Job, Outcome, OutcomeKind


class StopReason(enum.Enum):
    """Why the worker cancelled a running attempt; decides what is recorded."""

    CANCELLED = "cancelled"
    """A user cancelled the job: record ``cancelled``."""
    SHUTDOWN = "shutdown"
    """The grace period ran out: hand the job back without charging the attempt."""
    LEASE_LOST = "lease_lost"
    """Another party owns the job now (rescued): record nothing."""
    TIMEOUT = "timeout"
    """The attempt ran past the job's timeout: record a failed attempt (retried while
    attempts remain)."""


def error_entry(job: Job, exc: BaseException, *, with_traceback: bool = True) -> ErrorEntry:
    tb = "".join(traceback.format_exception(exc)) if with_traceback else None
    return ErrorEntry(
        at=time.time(),
        attempt=job.attempt,
        type=type(exc).__qualname__,
        message=str(exc) or type(exc).__qualname__,
        traceback=tb,
    )


def failure(kind: Kind | None, job: Job, error: ErrorEntry, *, retryable: bool) -> Outcome:
    """A failed attempt: retried with backoff while attempts remain, else failed."""
    if retryable and job.attempt < job.max_attempts:
        delay = kind.backoff.delay(job.attempt) if kind is not None else 0.0
        return Outcome(
            job.id, job.attempt, OutcomeKind.RETRY, job.queue, error=error, retry_in_s=delay
        )
    return Outcome(job.id, job.attempt, OutcomeKind.FAILED, job.queue, error=error)


async def execute(
    kind: Kind,
    ctx: JobContext,
    threads: Executor,
    stop_reasons: dict[tuple[int, int], StopReason],
) -> Outcome | None:
    """Run ``ctx.job`` once. Returns None when the job's lease was lost (nothing may be
    recorded), else the outcome to record. ``stop_reasons`` says, by (job id, attempt),
    why the worker cancelled an attempt; the worker also enforces the job's timeout that
    way (:attr:`StopReason.TIMEOUT`): one timer a job, where an ``asyncio.timeout``
    context and the timer that raises ``ctx.cancelled`` with it cost a tenth of a no-op
    job's time in the worker."""
    job = ctx.job
    try:
        payload = kind.handler_input(job.payload)
    except InvalidJob as exc:
        # Enqueued by name where the kind is not registered, so never validated: no
        # attempt can make it valid.
        return failure(kind, job, error_entry(job, exc, with_traceback=False), retryable=False)
    try:
        result = await _call(kind, ctx, payload, threads)
    except asyncio.CancelledError:
        ctx._mark_cancelled()
        reason = stop_reasons.pop((job.id, job.attempt), None)
        if reason is None:
            raise
        return stopped(job, reason, kind)
    except Exception as exc:
        retryable = not isinstance(exc, (Discard, *kind.non_retryable))
        return failure(kind, job, error_entry(job, exc), retryable=retryable)
    # Checked apart from the handler, whose own encoding errors are ordinary failures.
    try:
        orjson.dumps(result)
    except orjson.JSONEncodeError as exc:
        error = TypeError(f"result of kind {kind.name!r} is not JSON-serialisable: {exc}")
        return failure(kind, job, error_entry(job, error, with_traceback=False), retryable=False)
    return Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result=result)


async def _call(kind: Kind, ctx: JobContext, payload: Any, threads: Executor) -> Any:
    if kind.is_async:
        return await kind.handler(ctx, payload)
    # Run in the pool with the caller's context variables, so the job's log context
    # follows the handler into its thread.
    call = functools.partial(contextvars.copy_context().run, kind.handler, ctx, payload)
    return await asyncio.get_running_loop().run_in_executor(threads, call)


def stopped(job: Job, reason: StopReason, kind: Kind | None = None) -> Outcome | None:
    """What to record for an attempt the worker stopped (``kind``: the job's, if known,
    for a timeout's retry policy)."""
    if reason is StopReason.CANCELLED:
        return Outcome(job.id, job.attempt, OutcomeKind.CANCELLED, job.queue)
    if reason is StopReason.SHUTDOWN:
        return Outcome(job.id, job.attempt, OutcomeKind.RELEASED, job.queue)
    if reason is StopReason.TIMEOUT:
        timeout = TimeoutError(f"attempt exceeded its timeout of {job.timeout_s:g} s")
        return failure(kind, job, error_entry(job, timeout, with_traceback=False), retryable=True)
    return None
