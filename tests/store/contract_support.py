"""Helpers of the store contract suite (tests/store/test_contract_*.py), importable by
name unlike conftest: short claims, settles and reads through the Store protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from conveyor.store.base import Store
from conveyor.store.records import (
    ClaimRequest,
    ErrorEntry,
    Job,
    NewJob,
    Outcome,
    OutcomeKind,
    QueueStats,
    SettleResult,
)

NewJobFactory = Callable[..., NewJob]

W1 = "worker-1"
W2 = "worker-2"
NOOP = "test.noop"
"""The kind of the ``new_job`` fixture's jobs, which the claims here ask for."""


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
