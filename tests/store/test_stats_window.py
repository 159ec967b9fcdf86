"""Counts of finished jobs cover the last FINISHED_WINDOW_S only, on every store: a job
that finished before is no longer counted (nor read), however many such jobs are kept.

The store contract has no verb to age a job, so this ages one in SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import asyncpg

from conveyor.store.base import Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import ClaimRequest, ErrorEntry, NewJob, Outcome, OutcomeKind
from conveyor.store.sqlite import SqliteStore
from conveyor.store.stats import FINISHED_WINDOW_S

NewJobFactory = Callable[..., NewJob]


async def _finish_one(store: Store, new_job: NewJobFactory, kind: OutcomeKind) -> int:
    await store.enqueue([new_job()])
    claim = ClaimRequest("w", {"default": 1}, 30, kinds=("test.noop",))
    job = (await store.settle_and_claim([], [], "w", claim)).claimed[0]
    error = ErrorEntry(0.0, job.attempt, "E", "boom") if kind is OutcomeKind.FAILED else None
    outcome = Outcome(job.id, job.attempt, kind, job.queue, error=error)
    assert (await store.settle_and_claim([outcome], [], "w", None)).applied == (True,)
    return job.id


async def _age(store: Store, job_id: int, seconds: float) -> None:
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        try:
            conn.execute(
                "UPDATE conveyor_jobs SET finished_at = finished_at - ?, "
                "started_at = started_at - ? WHERE id = ?",
                (seconds, seconds, job_id),
            )
            conn.commit()
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store.url)
    try:
        await pg.execute(
            "UPDATE conveyor_jobs SET finished_at = finished_at - make_interval(secs => $1), "
            "started_at = started_at - make_interval(secs => $1) WHERE id = $2",
            seconds,
            job_id,
        )
    finally:
        await pg.close()


async def test_finished_jobs_are_counted_over_the_window(
    store: Store, new_job: NewJobFactory
) -> None:
    old_done = await _finish_one(store, new_job, OutcomeKind.COMPLETED)
    old_failed = await _finish_one(store, new_job, OutcomeKind.FAILED)
    await _finish_one(store, new_job, OutcomeKind.COMPLETED)
    await store.enqueue([new_job()])
    for job_id in (old_done, old_failed):
        await _age(store, job_id, FINISHED_WINDOW_S + 60)

    [stats] = await store.queue_stats()
    assert stats.counts == {
        "queued": 1,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert (stats.completed_last_minute, stats.failed_last_minute) == (1, 0)
