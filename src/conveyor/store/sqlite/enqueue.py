"""Inserting jobs (run on the store's thread, inside a write transaction)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from conveyor.store.records import Enqueued, NewJob
from conveyor.store.sqlite import events
from conveyor.store.sqlite.queries import Q, execute, ordered
from conveyor.store.sqlite.rows import dumps
from conveyor.store.ticks import TickTaken

_INSERT_JOB = ordered(
    "insert_job",
    "id",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "payload",
    "max_attempts",
    "run_at",
    "timeout_s",
    "unique_key",
    "meta",
    "now",
)
_NEXT_JOB_ID = Q["next_job_id"].sql
_FIND_ACTIVE_UNIQUE = ordered("find_active_unique", "tenant_id", "unique_key")


def insert_jobs(
    conn: sqlite3.Connection, now: float, jobs: Sequence[NewJob], *, log: bool
) -> list[Enqueued]:
    """Insert ``jobs``; a job whose unique_key an active job of its tenant (or an earlier
    job of the call) holds resolves to that job. Results in input order. With ``log``,
    each job inserted writes ``job.queued`` (one resolved to an earlier job writes none)."""
    # Ids are taken from sqlite_sequence while the write lock is held, so a bulk insert
    # runs as one executemany and each result maps to its input without RETURNING
    # (whose order SQLite leaves unspecified).
    first = next_id = int(conn.execute(_NEXT_JOB_ID).fetchone()[0]) + 1
    results: list[Enqueued] = []
    rows: list[tuple[Any, ...]] = []
    seen_keys: dict[tuple[str, str], int] = {}
    for job in jobs:
        if job.unique_key is not None:
            key = (job.tenant_id, job.unique_key)
            existing = seen_keys.get(key)
            if existing is None:
                found = conn.execute(_FIND_ACTIVE_UNIQUE, key).fetchone()
                existing = found[0] if found else None
            if existing is not None:
                results.append(Enqueued(existing, created=False))
                continue
            seen_keys[key] = next_id
        run_at = job.run_at if job.run_at is not None else now + job.delay_s
        rows.append(
            (
                next_id,
                job.tenant_id,
                job.queue,
                job.kind,
                job.priority,
                dumps(job.payload),
                job.max_attempts,
                run_at,
                job.timeout_s,
                job.unique_key,
                dumps(job.meta),
                now,
            )
        )
        results.append(Enqueued(next_id, created=True))
        next_id += 1
    conn.executemany(_INSERT_JOB, rows)
    if log and rows:
        # The ids inserted are consecutive: those resolved to earlier jobs took none.
        events.record_queued(conn, now, first, next_id - 1)
    return results


def insert_periodic(
    conn: sqlite3.Connection, now: float, job: NewJob, tick: float, *, log: bool
) -> Enqueued:
    """Insert ``job`` for periodic tick ``tick`` of its kind (with ``log``, its
    ``job.queued``); raises :class:`TickTaken` (rolling the transaction back) if some
    worker already enqueued that tick."""
    (result,) = insert_jobs(conn, now, [job], log=log)
    values = {"kind": job.kind, "tick": tick, "job_id": result.id}
    if not execute(conn, "insert_tick", values).rowcount:
        raise TickTaken
    return result
