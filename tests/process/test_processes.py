"""Guarantees that only show with real processes: crashes, signals, several workers on
one SQLite file, concurrency limits and the memory guard.

Each test starts ``conveyor worker`` subprocesses (JSON logs) on a fresh database, feeds
them the kinds of :mod:`proc_kinds` and watches the database and the files the handlers
write. Waits poll with deadlines; the ``harness`` fixture kills any worker left over.
"""

from __future__ import annotations

import collections
import signal
import time
from typing import Any

import pytest
from proc_harness import FAST_LEASES, Harness, WorkerProcess


def is_warning_or_worse(entry: dict[str, Any]) -> bool:
    return entry.get("level") in {"warning", "error", "critical", "raw"}


def stop(worker: WorkerProcess, timeout: float = 15) -> int:
    """SIGTERM the worker and return its exit code."""
    worker.send(signal.SIGTERM)
    return worker.wait_exit(timeout)


# -- a) crash: the job is rescued and runs again ----------------------------------------
def test_a_sigkilled_workers_job_runs_again_on_another_worker(harness: Harness) -> None:
    [job_id] = harness.enqueue("proc.stuck_first")
    first = harness.start_worker(env=FAST_LEASES)
    harness.wait_until(lambda: harness.started_by(job_id, 1), 15, "attempt 1 to start")
    assert harness.started_by(job_id, 1) == first.pid

    # A second worker is up while the first one runs the job: heartbeats keep the lease
    # alive past its 2 s, so the second one (whose rescuer runs every 0.5 s) leaves it be.
    second = harness.start_worker(env=FAST_LEASES)
    harness.wait_started(second)
    time.sleep(2.5)
    job = harness.job(job_id)
    assert (job["state"], job["attempt"]) == ("running", 1)
    assert harness.started_by(job_id, 2) is None

    first.popen.kill()
    assert first.wait_exit(10) == -signal.SIGKILL

    harness.wait_until(
        lambda: harness.job(job_id)["state"] == "completed", 15, "the job to complete again"
    )
    job = harness.job(job_id)
    assert job["attempt"] == 2
    assert harness.started_by(job_id, 2) == second.pid
    assert job["result"] == {"attempt": 2, "pid": second.pid}
    [error] = job["errors"]
    assert (error["attempt"], error["type"]) == (1, "LeaseExpired")
    rescue = second.find_log(lambda e: e.get("event", "").startswith("rescued jobs"))
    assert rescue is not None, str(harness)
    assert rescue["requeued"] == [job_id]
    assert stop(second) == 0


# -- b) SIGTERM: finish within the grace period, else hand back -------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_lets_the_running_job_finish_and_exits_0(
    harness: Harness, sig: signal.Signals
) -> None:
    [running_id] = harness.enqueue("proc.sleep", {"seconds": 1.0})
    [waiting_id] = harness.enqueue("proc.sleep", {"seconds": 0})
    worker = harness.start_worker("--concurrency", "1")
    harness.wait_until(lambda: harness.started_by(running_id, 1), 15, "the job to start")

    worker.send(sig)
    assert worker.wait_exit(15) == 0

    job = harness.job(running_id)
    assert (job["state"], job["attempt"]) == ("completed", 1)
    assert job["result"] == {"attempt": 1, "pid": worker.pid}
    assert job["errors"] == []
    # A stopping worker fetches nothing new.
    waiting = harness.job(waiting_id)
    assert (waiting["state"], waiting["attempt"]) == ("queued", 0)
    assert harness.started_by(waiting_id, 1) is None
    events = [e.get("event") for e in worker.logs()]
    assert "signal received" in events
    assert "worker stopping: waiting for running jobs" in events
    assert events[-1] == "worker stopped"
    assert not [e for e in worker.logs() if is_warning_or_worse(e)], str(harness)


def test_sigterm_hands_a_long_job_back_after_the_grace_period(harness: Harness) -> None:
    [job_id] = harness.enqueue("proc.sleep", {"seconds": 60})
    worker = harness.start_worker(env={"CONVEYOR_SHUTDOWN_GRACE": "0.5"})
    harness.wait_until(lambda: harness.started_by(job_id, 1), 15, "the job to start")

    signalled = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - signalled < 10

    job = harness.job(job_id)
    assert job["state"] == "queued"
    assert job["attempt"] == 0  # not charged
    assert job["errors"] == []
    assert (job["locked_by"], job["lease_expires_at"], job["started_at"]) == (None, None, None)
    handed_back = worker.find_log(lambda e: "handed back" in e.get("event", ""))
    assert handed_back is not None, str(harness)
    assert (handed_back["job_id"], handed_back["attempt"]) == (job_id, 1)


def test_a_second_sigterm_hands_the_job_back_at_once(harness: Harness) -> None:
    [job_id] = harness.enqueue("proc.sleep", {"seconds": 60})
    worker = harness.start_worker()  # the default grace period: 30 s
    harness.wait_until(lambda: harness.started_by(job_id, 1), 15, "the job to start")

    worker.send(signal.SIGTERM)
    harness.wait_until(
        lambda: worker.find_log(lambda e: e.get("event", "").startswith("worker stopping")),
        10,
        "the worker to start stopping",
    )
    signalled = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - signalled < 10

    job = harness.job(job_id)
    assert (job["state"], job["attempt"], job["errors"]) == ("queued", 0, [])


def test_a_hung_sync_handler_neither_blocks_the_exit_nor_is_handed_back(
    harness: Harness,
) -> None:
    [job_id] = harness.enqueue("proc.sync_hang", None)
    worker = harness.start_worker(env={"CONVEYOR_SHUTDOWN_GRACE": "0.5"})
    harness.wait_until(lambda: harness.started_by(job_id, 1), 15, "the job to start")
    harness.wait_until(
        lambda: worker.find_log(lambda e: "past its timeout" in e.get("event", "")),
        10,
        "the timeout to fire",
    )

    signalled = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - signalled < 10
    # Its thread still ran: handed back, the job would have run twice at once.
    job = harness.job(job_id)
    started = worker.find_log(lambda e: e.get("event") == "worker started")
    assert started is not None, str(harness)
    assert (job["state"], job["attempt"]) == ("running", 1)
    assert job["locked_by"] == started["worker_id"]
    let_go = worker.find_log(lambda e: "will be rescued" in e.get("event", ""))
    assert let_go is not None, str(harness)
    assert let_go["job_id"] == job_id


def test_a_cancel_from_another_process_stops_the_running_job(harness: Harness) -> None:
    [job_id] = harness.enqueue("proc.sleep", {"seconds": 60})
    worker = harness.start_worker(env={"CONVEYOR_CANCEL_CHECK_INTERVAL": "0.1"})
    harness.wait_until(lambda: harness.started_by(job_id, 1), 15, "the job to start")

    assert harness.cancel(job_id) == "running"  # asked; the worker does the stopping
    harness.wait_until(
        lambda: harness.job(job_id)["state"] == "cancelled", 10, "the job to be cancelled"
    )
    job = harness.job(job_id)
    assert job["attempt"] == 1
    assert job["result"] is None
    assert job["finished_at"] is not None
    assert worker.find_log(lambda e: e.get("event") == "job cancelled while running")
    assert stop(worker) == 0


# -- c) two processes, one file: no job runs twice --------------------------------------
JOBS = 2000


@pytest.mark.parametrize("order", ["enqueue-first", "workers-first"])
def test_two_workers_run_2000_jobs_exactly_once(harness: Harness, order: str) -> None:
    ids: list[int] = []
    if order == "enqueue-first":
        ids = harness.enqueue("proc.record", count=JOBS)
    workers = [harness.start_worker(), harness.start_worker()]
    if order == "workers-first":
        for worker in workers:
            harness.wait_started(worker)
        for _ in range(4):
            ids += harness.enqueue("proc.record", count=JOBS // 4)
    assert len(set(ids)) == JOBS

    harness.wait_until(
        lambda: harness.count("state = 'completed'") == JOBS, 60, f"{JOBS} jobs to complete"
    )
    for worker in workers:
        assert stop(worker) == 0

    runs: collections.Counter[int] = collections.Counter()
    per_process: dict[int, int] = {}
    for worker in workers:
        ran = harness.out / f"ran-{worker.pid}.txt"
        lines = ran.read_text().split() if ran.exists() else []
        per_process[worker.pid] = len(lines)
        runs.update(int(line) for line in lines)
    twice = sorted(job_id for job_id, n in runs.items() if n > 1)
    assert not twice, f"jobs run more than once: {twice[:20]}"
    assert sorted(runs) == sorted(ids)
    assert harness.count("state = 'completed' AND attempt = 1") == JOBS
    if order == "workers-first":
        assert all(per_process.values()), per_process  # both took part
    for worker in workers:
        assert not [e for e in worker.logs() if is_warning_or_worse(e)], str(harness)


# -- d) the concurrency limit is reached and never passed -------------------------------
@pytest.mark.parametrize(
    "args", [("--queues", "q:3"), ("--queues", "q", "--concurrency", "3")], ids=["q:3", "c3"]
)
def test_concurrency_reaches_the_limit_exactly(harness: Harness, args: tuple[str, ...]) -> None:
    ids = harness.enqueue("proc.overlap", {"seconds": 0.3}, count=12)
    worker = harness.start_worker(*args)

    db_peak = 0

    def all_done() -> bool:
        nonlocal db_peak
        db_peak = max(db_peak, harness.count("state = 'running'"))
        return harness.count("state = 'completed'") == len(ids)

    harness.wait_until(all_done, 30, "12 jobs to complete")
    assert stop(worker) == 0

    current, peak = map(int, (harness.out / "active").read_text().split())
    assert current == 0
    assert peak == 3, f"at most {peak} jobs ran at once; the limit is 3"
    assert 1 <= db_peak <= 3
    assert harness.count("state = 'completed' AND attempt = 1") == 12


# -- e) the memory guard stops fetching -------------------------------------------------
def test_memory_guard_stops_fetching(harness: Harness) -> None:
    [early] = harness.enqueue("proc.sleep", {"seconds": 0})
    worker = harness.start_worker(
        env={"CONVEYOR_MAX_MEMORY_MB": "1", "CONVEYOR_MEMORY_CHECK_INTERVAL": "0.2"}
    )
    warning = harness.wait_until(
        lambda: worker.find_log(lambda e: e.get("level") == "warning" and "rss_mb" in e),
        15,
        "the memory warning",
    )
    assert warning is not None
    assert "memory" in warning["event"]
    assert warning["rss_mb"] > 1
    assert warning["max_memory_mb"] == 1
    [late] = harness.enqueue("proc.sleep", {"seconds": 0})

    watch_until = time.monotonic() + 1.0
    while time.monotonic() < watch_until:
        for job_id in (early, late):
            job = harness.job(job_id)
            assert (job["state"], job["attempt"]) == ("queued", 0), (job, str(harness))
        time.sleep(0.05)
    assert worker.alive()
    assert not list(harness.out.glob("started-*"))
    assert stop(worker) == 0
