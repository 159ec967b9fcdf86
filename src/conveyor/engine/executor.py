"""Run one attempt of one job and say how it ended.

The executor knows nothing of the database: it turns a handler's return, exception,
timeout or cancellation into an :class:`Outcome` that the worker records.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import math
import time
import traceback
from concurrent.futures import Executor
from typing import Any

import orjson

from conveyor.engine.context import JobContext, storable_text
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
    ABANDONED = "abandoned"
    """The worker exits while a sync handler's thread still runs: record nothing (handing
    the job back would let it run twice at once); its lease expires and it is rescued."""


RESULT_MAX_BYTES = 16 * 1024 * 1024
"""The largest result a job may return, as encoded JSON. A result is one field of one
row, read back whole with the job; output larger than this belongs in a file or object
store, with its address as the result."""

_NUL_ESCAPE = b"\\u0000"
"""How orjson writes a NUL character inside a string or key."""


def error_entry(job: Job, exc: BaseException, *, with_traceback: bool = True) -> ErrorEntry:
    tb = "".join(traceback.format_exception(exc)) if with_traceback else None
    name = storable_text(type(exc).__qualname__)
    try:
        message = str(exc)
    except Exception as broken:  # an exception whose __str__ fails must still be recorded
        message = f"<str() of the exception raised {type(broken).__name__}>"
    return ErrorEntry(
        at=time.time(),
        attempt=job.attempt,
        type=name,
        message=storable_text(message) or name,
        traceback=None if tb is None else storable_text(tb),
    )


def encode_result(kind: Kind, result: Any) -> bytes | Exception:
    """The result as JSON, or the error that fails the attempt (never retried: the same
    handler returns the same result again). Refused here, for every store alike, is what
    one of them cannot store or read back: anything orjson cannot encode (other types,
    lone surrogates, integers past 64 bits, nesting past 255 levels, which every store
    reads back), a NUL character (PostgreSQL's jsonb refuses ``\\u0000``), NaN and
    Infinity (JSON has no such numbers: orjson would write null), and results above
    :data:`RESULT_MAX_BYTES`.

    The common result costs two searches of the encoded bytes: NUL shows as an escape,
    and a non-finite float as ``null``, so only a result holding a null is walked."""
    try:
        encoded = orjson.dumps(result)
    except orjson.JSONEncodeError as exc:
        return TypeError(f"result of kind {kind.name!r} is not JSON-serialisable: {exc}")
    if len(encoded) > RESULT_MAX_BYTES:
        return ValueError(
            f"result of kind {kind.name!r} is {len(encoded):,} bytes as JSON, above the "
            f"limit of {RESULT_MAX_BYTES:,} (RESULT_MAX_BYTES): store large output "
            "elsewhere and return its address"
        )
    # find, not `in`: cheaper on short bytes (Python 3.11; docs/benchmarks.md).
    if encoded.find(_NUL_ESCAPE) >= 0 and _has_nul(encoded):
        return ValueError(
            f"result of kind {kind.name!r} contains a NUL character (\\x00), which "
            "PostgreSQL cannot store in JSON: remove it or replace it (e.g. with U+FFFD)"
        )
    if result is not None and encoded.find(b"null") >= 0 and _has_non_finite(result):
        return ValueError(
            f"result of kind {kind.name!r} contains NaN or Infinity, which JSON cannot "
            "represent: return None or a string in its place"
        )
    return encoded


def _has_nul(encoded: bytes) -> bool:
    """Whether an escape found in ``encoded`` is a NUL, not a string holding a backslash
    and "u0000" (written ``\\\\u0000``): a NUL escape follows an even run of backslashes."""
    at = encoded.find(_NUL_ESCAPE)
    while at >= 0:
        start = at
        while start > 0 and encoded[start - 1] == 0x5C:
            start -= 1
        if (at - start) % 2 == 0:
            return True
        at = encoded.find(_NUL_ESCAPE, at + 1)
    return False


def _has_non_finite(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return isinstance(value, float) and not math.isfinite(value)
    for item in value:
        # The common leaves first, without a call each.
        if item is None or type(item) is int or type(item) is str or type(item) is bool:
            continue
        if _has_non_finite(item):
            return True
    return False


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
    way (:attr:`StopReason.TIMEOUT`): one timer a job, cheaper than an ``asyncio.timeout``
    context beside the timer that raises ``ctx.cancelled`` (docs/benchmarks.md)."""
    job = ctx.job
    raised: Exception | None = None
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
        raised = exc
    if ctx._cancelled and not kind.is_async:
        # A thread cannot be interrupted: the worker stopped the attempt by waiting for
        # its thread to return, and why it stopped it decides what is recorded.
        reason = stop_reasons.pop((job.id, job.attempt), None)
        if reason is not None:
            return stopped(job, reason, kind)
    if raised is not None:
        retryable = not isinstance(raised, (Discard, *kind.non_retryable))
        return failure(kind, job, error_entry(job, raised), retryable=retryable)
    # Checked apart from the handler, whose own encoding errors are ordinary failures.
    encoded = encode_result(kind, result)
    if isinstance(encoded, Exception):
        return failure(kind, job, error_entry(job, encoded, with_traceback=False), retryable=False)
    return Outcome(
        job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result, result_json=encoded.decode()
    )


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
