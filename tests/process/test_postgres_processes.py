"""Guarantees of the PostgreSQL store that only show with real processes: several workers
on one database, dropped connections, a killed worker, an idle worker's traffic, the
cluster-wide queue limit and periodic jobs.

Each test runs ``conveyor worker`` subprocesses on a fresh PostgreSQL database of its own
(the ``pg_harness`` fixture; failed with a message where no server answers, unless
``CONVEYOR_TEST_SKIP_SERVICES`` lists ``postgresql``: see ``missing_service.py``) and
watches the database and the files the handlers of :mod:`proc_kinds` write. Waits poll
with deadlines; the fixture kills any worker left over.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import os
import random
import re
import secrets
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
from proc_harness import FAST_LEASES, Harness, WorkerProcess
from proc_kinds import KINDS

from conveyor import Client
from missing_service import unavailable


def is_warning_or_worse(entry: dict[str, Any]) -> bool:
    return entry.get("level") in {"warning", "error", "critical", "raw"}


def stop(worker: WorkerProcess, timeout: float = 15) -> int:
    """SIGTERM the worker and return its exit code."""
    worker.send(signal.SIGTERM)
    return worker.wait_exit(timeout)


def handler_runs(harness: Harness) -> collections.Counter[int]:
    """How many times each job id was written by a ``proc.record*`` handler, across every
    worker process's ``ran-{pid}.txt``."""
    runs: collections.Counter[int] = collections.Counter()
    for path in harness.out.glob("ran-*.txt"):
        runs.update(int(line) for line in path.read_text().split())
    return runs


def assert_each_ran_once(harness: Harness, ids: list[int]) -> None:
    """Every job of ``ids`` ran its handler exactly once, and no other job ran."""
    runs = handler_runs(harness)
    twice = sorted(job_id for job_id, n in runs.items() if n > 1)
    assert not twice, f"{len(twice)} jobs ran more than once: {twice[:20]}"
    assert sorted(runs) == sorted(ids), "some jobs never ran, or unknown ids ran"


def database_name(harness: Harness) -> str:
    return harness.url.rsplit("/", 1)[-1].split("?", 1)[0]


def terminate_backends(harness: Harness) -> set[int]:
    """``pg_terminate_backend`` every connection to the test database but the harness's
    own; the backend pids terminated."""
    rows = harness.query(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        (database_name(harness),),
    )
    return {pid for pid, ok in rows if ok}


def listen_backends(harness: Harness) -> set[int]:
    """Backend pids of the workers' notice connections, which run nothing but LISTEN and
    then the lock on the key of their handoff offers."""
    rows = harness.query(LISTEN_BACKENDS, (database_name(harness),))
    return {pid for (pid,) in rows}


LISTEN_BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
    "AND (query ILIKE 'LISTEN %' OR query ILIKE 'SELECT pg_advisory_lock%')"
)


def completed_at_least(harness: Harness, n: int) -> bool:
    return harness.count("state = 'completed'") >= n


def new_listeners(harness: Harness, old: set[int], count: int) -> set[int]:
    """The LISTEN backends if there are ``count`` of them and none is in ``old``, else an
    empty set."""
    now = listen_backends(harness)
    return now if len(now) == count and not now & old else set()


# -- 4 processes x 10,000 jobs: each completed exactly once ----------------------------------
JOBS = 10_000


def test_four_workers_complete_10000_jobs_exactly_once(pg_harness: Harness) -> None:
    h = pg_harness
    workers = [h.start_worker("--concurrency", "50") for _ in range(4)]
    for worker in workers:
        h.wait_started(worker)
    # Enqueued in four bulk statements while the workers already claim.
    ids: list[int] = []
    for _ in range(4):
        ids += h.enqueue("proc.record", count=JOBS // 4)
    assert len(set(ids)) == JOBS

    h.wait_until(lambda: h.count("state = 'completed'") == JOBS, 40, f"{JOBS} jobs to complete")
    for worker in workers:
        assert stop(worker) == 0

    assert_each_ran_once(h, ids)
    assert h.count("state = 'completed' AND attempt = 1") == JOBS
    per_process = {
        w.pid: len((h.out / f"ran-{w.pid}.txt").read_text().split())
        if (h.out / f"ran-{w.pid}.txt").exists()
        else 0
        for w in workers
    }
    assert sum(per_process.values()) == JOBS
    assert all(per_process.values()), f"a worker ran nothing: {per_process}"
    for worker in workers:
        assert not [e for e in worker.logs() if is_warning_or_worse(e)], str(h)


# -- dropped connections: workers reconnect and finish ---------------------------------------
FLOW_JOBS = 3000


def test_workers_reconnect_after_their_backends_are_terminated(pg_harness: Harness) -> None:
    """Every connection of the workers (pool and LISTEN) is terminated three times while
    jobs flow; the workers reconnect and every job ends completed, none left queued or
    running.

    Delivery is at-least-once here, not exactly-once: a connection killed after the server
    committed an exchange but before the worker read the reply leaves the worker unaware
    of jobs it claimed (they are rescued when their 2 s lease runs out and run as attempt
    2) or of outcomes it recorded (the retried report is refused, harmlessly); a worker
    that could not renew a lease for longer than the lease may see its job rescued and run
    again. So a handler may run twice, but no job may be lost or stuck.
    """
    h = pg_harness
    workers = [
        h.start_worker("--concurrency", "10", env=FAST_LEASES | {"CONVEYOR_POLL_INTERVAL": "1"})
        for _ in range(4)
    ]
    for worker in workers:
        h.wait_started(worker)
    listening = h.wait_until(lambda: new_listeners(h, set(), 4), 10, "4 LISTEN connections")
    ids = h.enqueue("proc.record_slow", {"seconds": 0.05}, count=FLOW_JOBS)

    for threshold in (FLOW_JOBS // 6, FLOW_JOBS // 3, FLOW_JOBS // 2):
        h.wait_until(
            functools.partial(completed_at_least, h, threshold), 30, f"{threshold} jobs to complete"
        )
        assert h.count("state = 'queued'") > 0, "the jobs ran out before the termination"
        # The 4 LISTEN connections and pooled connections (a worker between two
        # reconnections may have none open at this instant, but not all four).
        terminated = terminate_backends(h)
        assert listening <= terminated
        assert len(terminated) > len(listening)
        # The LISTEN connections come back, as new backends.
        listening = h.wait_until(
            functools.partial(new_listeners, h, listening, 4), 15, "the 4 workers to listen again"
        )

    h.wait_until(
        lambda: h.count("state = 'completed'") == FLOW_JOBS, 45, f"{FLOW_JOBS} jobs to complete"
    )
    assert h.count("state <> 'completed'") == 0
    assert all(w.alive() for w in workers), str(h)
    runs = handler_runs(h)
    assert set(runs) == set(ids), "a completed job's handler never finished"
    for worker in workers:
        assert stop(worker) == 0


def test_a_worker_is_woken_through_its_reestablished_listen_connection(
    pg_harness: Harness,
) -> None:
    """With the safety poll and the rescuer at 60 s, only a notice can get a new job
    started within seconds: after its connections are terminated, the worker's new LISTEN
    connection must deliver it."""
    h = pg_harness
    slow = {"CONVEYOR_POLL_INTERVAL": "60", "CONVEYOR_RESCUE_INTERVAL": "60"}
    worker = h.start_worker(env=slow)
    h.wait_started(worker)
    before = h.wait_until(lambda: new_listeners(h, set(), 1), 10, "the LISTEN connection")
    terminated = terminate_backends(h)
    assert before <= terminated
    assert len(terminated) > len(before)  # its pooled connection too
    h.wait_until(lambda: new_listeners(h, before, 1), 15, "a new LISTEN connection")

    [job_id] = h.enqueue("proc.sleep", {"seconds": 0})
    h.wait_until(lambda: h.job(job_id)["state"] == "completed", 5, "the job to complete")
    assert h.job(job_id)["attempt"] == 1
    assert stop(worker) == 0


# -- SIGKILL: the job is rescued by another process ------------------------------------------
def test_a_sigkilled_workers_job_is_rescued_by_another_process(pg_harness: Harness) -> None:
    h = pg_harness
    [job_id] = h.enqueue("proc.stuck_first")
    first = h.start_worker(env=FAST_LEASES)
    h.wait_until(lambda: h.started_by(job_id, 1), 15, "attempt 1 to start")
    assert h.started_by(job_id, 1) == first.pid

    # A second worker is up while the first one runs the job: heartbeats keep the 2 s
    # lease alive, so the second one (whose rescue runs every 0.5 s) leaves it be.
    second = h.start_worker(env=FAST_LEASES)
    h.wait_started(second)
    watch_until = time.monotonic() + 2.5
    while time.monotonic() < watch_until:
        job = h.job(job_id)
        assert (job["state"], job["attempt"]) == ("running", 1), (job, str(h))
        time.sleep(0.1)
    assert h.started_by(job_id, 2) is None

    first.popen.kill()
    assert first.wait_exit(10) == -signal.SIGKILL

    h.wait_until(lambda: h.job(job_id)["state"] == "completed", 15, "the job to complete again")
    job = h.job(job_id)
    assert job["attempt"] == 2
    assert h.started_by(job_id, 2) == second.pid
    assert job["result"] == {"attempt": 2, "pid": second.pid}
    [error] = job["errors"]
    assert (error["attempt"], error["type"]) == (1, "LeaseExpired")
    assert stop(second) == 0


# -- an idle worker hardly talks to the database ---------------------------------------------
IDLE_WINDOW_S = 10.0
STATEMENT = re.compile(r"LOG:  (statement|execute [^:]*): (.*)")


def _unavailable(reason: str) -> NoReturn:
    unavailable("postgresql-log", f"cannot count the statements an idle worker sends: {reason}")


def _server_log(h: Harness) -> Path:
    """The server's log file (``CONVEYOR_TEST_POSTGRES_LOG``, else the logging
    collector's current file, else Debian's default), once its lines are known to carry
    the database name."""
    [(prefix, major, data_dir)] = h.query(
        "SELECT current_setting('log_line_prefix'), current_setting('server_version_num'), "
        "current_setting('data_directory')"
    )
    if "%d" not in prefix:
        _unavailable(f"log_line_prefix {prefix!r} does not name the database (%d)")
    configured = os.environ.get("CONVEYOR_TEST_POSTGRES_LOG")
    try:
        [(current,)] = h.query("SELECT pg_current_logfile()")
    except asyncpg.InsufficientPrivilegeError:
        current = None
    candidates = [
        *([configured] if configured else []),
        *([str(Path(data_dir) / current)] if current else []),  # relative to the data dir
        f"/var/log/postgresql/postgresql-{int(major) // 10000}-main.log",
    ]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.R_OK):
            return path
    _unavailable(
        f"no readable server log among {candidates}; set CONVEYOR_TEST_POSTGRES_LOG to the "
        "server's log file"
    )


def _statements(log: Path, start: int, end: int, database: str) -> list[str]:
    with log.open("rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    found = []
    for line in text.splitlines():
        match = STATEMENT.search(line)
        if match and database in line:  # a random name: no other database's contains it
            found.append(match.group(0))
    return found


def test_an_idle_worker_sends_at_most_3_statements_in_10_seconds(pg_harness: Harness) -> None:
    """Counts the statements PostgreSQL receives from an idle worker over 10 s.

    Method: ``ALTER DATABASE … SET log_statement = 'all'`` makes the server log every
    statement of new connections to the test database (the worker's are all new), each
    line carrying the database name (``log_line_prefix`` must contain ``%d``). The test
    checks that the log file is the live one by finding a marker statement in it, starts
    the worker with default settings, waits 2 s after ``worker started`` (start-up work:
    migration check, registration, first heartbeat, prune, first claims), then counts the
    ``statement:`` / ``execute`` lines of the test database written to the log in a 10 s
    window (from the file's size at the start of the window to its size at the end). No
    other client uses that database meanwhile: the harness's own connection predates the
    ALTER and sends nothing in the window. With the defaults (safety poll and rescue every
    5 s, riding on one exchange statement; heartbeat every 10 s) that is 2 exchanges and 1
    heartbeat. Where the log cannot be read or set the test fails, or is skipped where
    ``CONVEYOR_TEST_SKIP_SERVICES`` lists ``postgresql-log``.
    """
    h = pg_harness
    database = database_name(h)
    log = _server_log(h)
    try:
        h.query(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
    except asyncpg.InsufficientPrivilegeError as exc:
        _unavailable(f"ALTER DATABASE … SET log_statement needs a superuser: {exc}")

    marker = f"conveyor-idle-marker-{secrets.token_hex(4)}"

    async def say_marker() -> None:
        conn = await asyncpg.connect(h.url)
        try:
            await conn.execute(f"SELECT '{marker}'")
        finally:
            await conn.close()

    try:
        asyncio.run(say_marker())
        try:
            h.wait_until(lambda: marker in log.read_text(errors="replace"), 5, "the marker")
        except AssertionError:
            _unavailable(f"{log} is not the log of the server at {h.url}")

        worker = h.start_worker()  # default intervals: poll 5 s, rescue 5 s, heartbeat 10 s
        h.wait_started(worker)
        time.sleep(2.0)  # the start-up statements are not idle traffic
        start = log.stat().st_size
        time.sleep(IDLE_WINDOW_S)  # the measurement window itself
        end = log.stat().st_size
        assert end >= start, f"{log} was rotated during the window; run again"
        statements = _statements(log, start, end, database)
        assert worker.alive(), str(h)
        listing = "\n".join(statements)
        print(f"idle worker: {len(statements)} statements in {IDLE_WINDOW_S} s:\n{listing}")
        # At least one: the safety poll must show, or the count measures nothing.
        assert 1 <= len(statements) <= 3, (
            f"{len(statements)} statements reached PostgreSQL from an idle worker in "
            f"{IDLE_WINDOW_S} s:\n{listing}"
        )
        assert stop(worker) == 0
    finally:
        h.query(f'ALTER DATABASE "{database}" RESET log_statement')


# -- the cluster-wide limit holds across 4 processes -----------------------------------------
def test_a_cluster_wide_limit_holds_across_four_workers(pg_harness: Harness) -> None:
    h = pg_harness
    workers = [h.start_worker("--queues", "video:5") for _ in range(4)]
    for worker in workers:
        h.wait_started(worker)
    # Set once the workers serve the queue: a queue nobody serves and no job names
    # cannot take a setting.
    h.set_queue_limit("video", 2)
    # One statement, one notice: the 4 workers race for the 20 jobs at once.
    ids = h.enqueue("proc.overlap", {"seconds": 0.2}, queue="video", count=20)

    db_peak = 0

    def all_done() -> bool:
        nonlocal db_peak
        db_peak = max(db_peak, h.count("state = 'running' AND queue = 'video'"))
        return h.count("state = 'completed'") == len(ids)

    h.wait_until(all_done, 30, "20 jobs to complete")
    for worker in workers:
        assert stop(worker) == 0

    current, peak = map(int, (h.out / "active").read_text().split())
    assert current == 0
    assert peak == 2, f"{peak} jobs of queue video ran at once; its cluster-wide limit is 2"
    assert 1 <= db_peak <= 2
    assert h.count("state = 'completed' AND attempt = 1") == 20
    for worker in workers:
        assert not [e for e in worker.logs() if is_warning_or_worse(e)], str(h)


# -- a periodic job is enqueued once per tick however many workers run -----------------------
CRON_TICK_S = 5
"""The period of ``proc.cron`` (``tests/process/proc_kinds.py``)."""


def test_a_periodic_job_is_enqueued_once_per_tick_by_three_workers(pg_harness: Harness) -> None:
    """``proc.cron`` runs every five seconds: the three workers' schedulers all reach a
    tick after they started, and exactly one job is enqueued for it."""
    h = pg_harness
    workers = [h.start_worker("--queues", "cron") for _ in range(3)]
    for worker in workers:
        h.wait_started(worker)
    # Each scheduler starts right after "worker started"; a second of margin for the last.
    tick = math.floor((time.time() + 1.0) / CRON_TICK_S + 1) * CRON_TICK_S
    tick_iso = datetime.fromtimestamp(tick, UTC).isoformat()

    def tick_jobs() -> list[dict[str, Any]]:
        return h.rows(
            "SELECT * FROM conveyor_jobs WHERE kind = 'proc.cron' AND meta->>'periodic_tick' = $1",
            (tick_iso,),
        )

    h.wait_until(
        lambda: any(j["state"] == "completed" for j in tick_jobs()),
        tick - time.time() + 20,
        f"the job of tick {tick_iso} to complete",
    )
    # Every scheduler has had its turn at the tick by now (they fire at the same moment);
    # give a straggler a moment more before counting.
    time.sleep(1.0)
    [job] = tick_jobs()
    assert (job["state"], job["attempt"], job["queue"]) == ("completed", 1, "cron")
    assert job["result"]["tick"] == tick_iso
    assert job["result"]["pid"] in {w.pid for w in workers}
    ticks = h.query(
        "SELECT job_id FROM conveyor_periodic_ticks WHERE kind = 'proc.cron' "
        "AND tick = to_timestamp($1)",
        (float(tick),),
    )
    assert ticks == [(job["id"],)]
    for worker in workers:
        assert stop(worker) == 0


# -- handoff: single enqueues to idle workers start in one commit, and run once --------------
HANDOFF_JOBS = 600


def offering_workers(harness: Harness, count: int) -> list[WorkerProcess]:
    """``count`` idle worker processes (concurrency 4), once each offers its free slots."""
    workers = [harness.start_worker("--concurrency", "4") for _ in range(count)]
    for worker in workers:
        harness.wait_started(worker)
    harness.wait_until(
        lambda: (
            harness.query("SELECT count(DISTINCT worker_id) FROM conveyor_offers")[0][0] == count
        ),
        10,
        f"the {count} workers to offer their slots",
    )
    return workers


def test_single_enqueues_are_handed_to_idle_workers_and_run_once(pg_harness: Harness) -> None:
    """Three idle worker processes offer their free slots; the test enqueues 600 jobs one
    at a time, now and then after a short pause (so that workers are sometimes idle and
    sometimes still busy or mid-exchange when the next job comes). Handed off or claimed,
    every job must run exactly once, as attempt 1 (a handoff handed back undoes its
    attempt), and some must have been handed off: inserted running, so started in the
    statement that created them (``started_at = created_at``)."""
    h = pg_harness
    workers = offering_workers(h, 3)
    pauses = random.Random(HANDOFF_JOBS)

    async def enqueue_one_at_a_time() -> list[int]:
        async with await Client.connect(h.url, kinds=KINDS) as client:
            ids = []
            for _ in range(HANDOFF_JOBS):
                ids.append((await client.enqueue("proc.record")).id)
                if pauses.random() < 0.3:
                    await asyncio.sleep(pauses.uniform(0.0, 0.005))
            return ids

    ids = asyncio.run(enqueue_one_at_a_time())
    h.wait_until(lambda: h.count("state = 'completed'") == HANDOFF_JOBS, 15, f"{HANDOFF_JOBS} jobs")
    for worker in workers:
        assert stop(worker) == 0

    assert_each_ran_once(h, ids)
    assert h.count("attempt = 1") == HANDOFF_JOBS
    handed_off = h.count("started_at = created_at")
    print(f"handoff: {handed_off} of {HANDOFF_JOBS} jobs handed off, the rest claimed")
    assert handed_off > 0
    assert h.query("SELECT count(*) FROM conveyor_offers") == [(0,)]
    for worker in workers:
        assert not [e for e in worker.logs() if is_warning_or_worse(e)], str(h)


async def _listen_backends(admin: asyncpg.Connection, database: str, n: int) -> list[int]:
    """The pids of the ``n`` workers' LISTEN connections, once all ``n`` are connected."""
    deadline = time.monotonic() + 20
    while True:
        pids = [r[0] for r in await admin.fetch(LISTEN_BACKENDS, database)]
        if len(pids) >= n or time.monotonic() > deadline:
            return pids
        await asyncio.sleep(0.05)


def test_handoffs_survive_the_loss_of_the_listen_connections(pg_harness: Harness) -> None:
    """Single enqueues flow to three idle workers while their LISTEN connections are
    terminated twice. A handoff whose notice dies with the connection leaves its job
    running under a worker that never heard of it; the worker adopts it when the
    connection is back. Leases are the default 30 s, so a job left to the rescuer would
    not complete within the wait below; and as no claim's answer is lost (the pools are
    not touched), every job runs exactly once, as attempt 1."""
    h = pg_harness
    workers = offering_workers(h, 3)
    killed: list[int] = []

    async def enqueue_while_killing_listeners() -> list[int]:
        admin = await asyncpg.connect(h.url)
        try:
            async with await Client.connect(h.url, kinds=KINDS) as client:
                ids = []
                for n in range(HANDOFF_JOBS):
                    ids.append((await client.enqueue("proc.record")).id)
                    if n in (HANDOFF_JOBS // 3, 2 * HANDOFF_JOBS // 3):
                        # Right after a handoff committed: its notice may be in flight. The
                        # second time, the workers must have reconnected first: on a fast
                        # machine the enqueues between the kills take less than that.
                        pids = await _listen_backends(admin, database_name(h), len(workers))
                        await admin.execute(
                            "SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p", pids
                        )
                        killed.extend(pids)
                return ids
        finally:
            await admin.close()

    ids = asyncio.run(enqueue_while_killing_listeners())
    assert len(killed) == 6, f"expected 3 LISTEN backends killed twice, got {killed}"
    h.wait_until(lambda: h.count("state = 'completed'") == HANDOFF_JOBS, 15, f"{HANDOFF_JOBS} jobs")
    for worker in workers:
        assert stop(worker) == 0

    assert_each_ran_once(h, ids)
    assert h.count("attempt = 1") == HANDOFF_JOBS
    assert h.query("SELECT count(*) FROM conveyor_offers") == [(0,)]
    adopted = [e for w in workers for e in w.logs() if "adopting" in str(e.get("event"))]
    print(f"handoff: {len(adopted)} jobs adopted after their notice was lost")
