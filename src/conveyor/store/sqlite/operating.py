"""What operators and the cleaner ask: jobs looked up and listed, cancelled, retried,
pruned; queues paused and limited; workers registered; statistics (each run on the
store's thread, inside the transaction the store opened)."""

from __future__ import annotations

import sqlite3
import statistics

from conveyor.store.base import ConflictError
from conveyor.store.fairness import TENANT_LIMITS
from conveyor.store.filters import ListQuery
from conveyor.store.records import (
    EventType,
    Job,
    JobFilter,
    JobState,
    QueueStats,
    TenantLimits,
    WorkerInfo,
)
from conveyor.store.sqlite import events
from conveyor.store.sqlite.queries import PARTS, execute
from conveyor.store.sqlite.rows import JOB, WORKER, dumps, job_or_none
from conveyor.store.stats import FINISHED_WINDOW_S, assemble_queue_stats

_LIST = ListQuery(PARTS, "list_jobs", JobFilter, "?")


def get_job(conn: sqlite3.Connection, job_id: int, tenant_id: str | None) -> Job | None:
    """The job (of ``tenant_id`` only, when given)."""
    return job_or_none(execute(conn, "get_job", {"id": job_id, "tenant_id": tenant_id}).fetchone())


def list_jobs(conn: sqlite3.Connection, flt: JobFilter) -> list[Job]:
    statement, args = _LIST.statement(flt)
    return [JOB.decode(row) for row in conn.execute(statement.sql, args)]


def cancel(
    conn: sqlite3.Connection, now: float, job_id: int, tenant_id: str | None, *, log: bool
) -> tuple[str | None, Job | None]:
    """The state the cancel left the job in (None: it was not active; ``running``: its
    worker is asked to stop it), and the job (of ``tenant_id`` only, when given). With
    ``log``, a queued job cancelled writes ``job.cancelled``; a running one writes it
    when its worker reports it stopped."""
    row = execute(conn, "cancel", {"id": job_id, "now": now, "tenant_id": tenant_id}).fetchone()
    state = row[0] if row else None
    if log and state == JobState.CANCELLED:
        events.record(conn, now, [events.entry(job_id, EventType.CANCELLED, {})])
    return state, get_job(conn, job_id, tenant_id)


def retry(
    conn: sqlite3.Connection, now: float, job_id: int, tenant_id: str | None, *, log: bool
) -> tuple[str | None, Job | None]:
    """The queue the job went back to (None: it was not failed or cancelled), and the job
    (of ``tenant_id`` only, when given); with ``log``, a job queued again writes
    ``job.queued``."""
    try:
        row = execute(conn, "retry", {"id": job_id, "now": now, "tenant_id": tenant_id}).fetchone()
    except sqlite3.IntegrityError as exc:
        raise ConflictError(
            f"job {job_id} cannot be retried: another queued or running job holds its "
            "unique_key; cancel that job first"
        ) from exc
    job = get_job(conn, job_id, tenant_id)
    if log and row is not None and job is not None:
        body = {"priority": job.priority, "run_at": job.run_at}
        events.record(conn, now, [events.entry(job_id, EventType.QUEUED, body)])
    return (row[0] if row else None), job


def prune(conn: sqlite3.Connection, now: float, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` jobs finished before ``older_than_s`` ago, their requests
    and the periodic ticks as old; the jobs deleted."""
    before = now - older_than_s
    execute(conn, "prune_ticks", {"before": before})
    found = execute(conn, "prunable", {"before": before, "limit": limit}).fetchall()
    ids = {"ids": dumps([job_id for (job_id,) in found])}
    execute(conn, "prune_requests", ids)
    return int(execute(conn, "prune", ids).rowcount)


def set_paused(conn: sqlite3.Connection, now: float, queue: str, paused: bool) -> bool:
    """Pause or resume ``queue``; False, nothing written, if it does not exist."""
    if not _queue_exists(conn, now, queue):
        return False
    execute(conn, "set_paused", {"queue": queue, "paused": int(paused), "now": now})
    return True


def set_limit(conn: sqlite3.Connection, now: float, queue: str, limit: int | None) -> bool:
    """Set ``queue``'s cluster-wide limit; False, nothing written, if it does not exist."""
    if not _queue_exists(conn, now, queue):
        return False
    execute(conn, "set_limit", {"queue": queue, "limit": limit, "now": now})
    return True


def _queue_exists(conn: sqlite3.Connection, now: float, queue: str) -> bool:
    return bool(execute(conn, "queue_exists", {"queue": queue, "now": now}).fetchone()[0])


def register_worker(conn: sqlite3.Connection, now: float, info: WorkerInfo, lease_s: float) -> None:
    values = {
        "id": info.id,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": dumps(info.queues),
        "kinds": dumps(list(info.kinds)),
        "now": now,
        "lease_s": lease_s,
        "memory_mb": info.memory_mb,
    }
    execute(conn, "register_worker", values)


def unregister_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    execute(conn, "unregister_worker", {"id": worker_id})


def live_workers(conn: sqlite3.Connection, now: float) -> list[WorkerInfo]:
    return [WORKER.decode(row) for row in execute(conn, "list_workers", {"now": now})]


def queue_stats(
    conn: sqlite3.Connection, now: float, finished: bool, tenant_id: str | None
) -> list[QueueStats]:
    """See :meth:`conveyor.store.base.JobQueue.queue_stats`."""
    tenant = {"tenant_id": tenant_id}
    due = {
        queue: (n, now - oldest)
        for queue, n, oldest in execute(conn, "stats_due", {**tenant, "now": now})
    }
    recent = {
        (queue, state): n
        for queue, state, n in execute(conn, "stats_recent", {**tenant, "since": now - 60.0})
    }
    settings = {name: (bool(p), cap) for name, p, cap in execute(conn, "queue_settings", {})}
    counts = execute(conn, "stats_counts", tenant).fetchall()
    if finished:
        since = now - FINISHED_WINDOW_S
        counts += execute(conn, "stats_finished", {**tenant, "since": since}).fetchall()
    workers = live_workers(conn, now)
    names = {queue for queue, *_ in counts} | {queue for queue, _ in recent} | set(settings)
    names |= {queue for worker in workers for queue in worker.queues}
    run_times: dict[str, tuple[float | None, float | None]] = {}
    for queue in names:
        found = execute(conn, "stats_run_times", {**tenant, "queue": queue})
        times = sorted(t for (t,) in found)
        if times:
            run_times[queue] = (statistics.median(times), _percentile(times, 0.95))
    return assemble_queue_stats(
        counts, due, recent, run_times, settings, workers, finished=finished
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def set_tenant_limits(conn: sqlite3.Connection, now: float, limits: TenantLimits) -> None:
    """Set (or, all None, clear) what a tenant may do in a queue."""
    values = {**limits.to_json(), "now": now}
    clear = limits.concurrency is None and limits.rate is None and limits.weight is None
    execute(conn, "delete_tenant_limits" if clear else "upsert_tenant_limits", values)


def list_tenant_limits(conn: sqlite3.Connection, queue: str | None) -> list[TenantLimits]:
    return [
        TENANT_LIMITS.decode(row) for row in execute(conn, "list_tenant_limits", {"queue": queue})
    ]
