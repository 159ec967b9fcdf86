"""Fair share with real worker processes, on both stores: tenant A enqueues 10,000 jobs,
then tenant B one; B's job starts within the first few claims, with one worker process
and with three (each keeps its own turns, see :mod:`conveyor.store.fairness`).

Without the turns B's job, the last by id, would start after all of A's. The workers are
running when the burst is enqueued (in bulk, one transaction) and claiming it when B's job
arrives; the test counts the jobs started between B's enqueue and B's start, and stops the
workers once B's job has run, before A's burst is through.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from proc_harness import Harness

BURST = 10_000
CONCURRENCY = 10
"""Each worker's slots: a claim takes at most this many jobs."""
FIRST_CLAIMS = 3


def _run(h: Harness, workers: int) -> None:
    started = [h.start_worker("--concurrency", str(CONCURRENCY)) for _ in range(workers)]
    for worker in started:
        h.wait_started(worker)
    # The workers are claiming A's burst when B's job arrives.
    a = h.enqueue("proc.record", tenant_id="tenant-a", count=BURST)
    [b] = h.enqueue("proc.record", tenant_id="tenant-b")
    assert b > max(a)

    h.wait_until(lambda: h.job(b)["state"] == "completed", 30, "tenant B's job to complete")
    for worker in started:
        worker.send(signal.SIGTERM)
    for worker in started:
        assert worker.wait_exit(15) == 0, str(h)

    job = h.job(b)
    p1, p2 = ("$1", "$2") if h.dialect == "postgresql" else ("?", "?")
    # A's jobs that started after B was enqueued and before B did: those of the claims
    # that came first (a claim stamps all its jobs with one started_at).
    ahead = h.count(
        f"started_at >= {p1} AND started_at < {p2}",
        (_column(h, b, "created_at"), _column(h, b, "started_at")),
    )
    ran = h.count("started_at IS NOT NULL")
    assert ahead < FIRST_CLAIMS * CONCURRENCY * workers, (ahead, ran)
    assert ran < BURST, "every job of the burst ran before the workers stopped"
    assert job["attempt"] == 1
    for worker in started:
        problems = [e for e in worker.logs() if e.get("level") in {"error", "critical", "raw"}]
        assert not problems, str(h)


def _column(h: Harness, job_id: int, column: str) -> Any:
    """A time column of the job as the database holds it (a timestamptz on PostgreSQL, a
    Unix time on SQLite), to compare in SQL."""
    placeholder = "$1" if h.dialect == "postgresql" else "?"
    [(value,)] = h.query(f"SELECT {column} FROM conveyor_jobs WHERE id = {placeholder}", (job_id,))
    return value


@pytest.mark.parametrize("workers", [1, 3])
def test_a_burst_of_one_tenant_does_not_hold_back_another_sqlite(
    harness: Harness, workers: int
) -> None:
    _run(harness, workers)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_burst_of_one_tenant_does_not_hold_back_another_postgresql(
    pg_harness: Harness, workers: int
) -> None:
    _run(pg_harness, workers)
