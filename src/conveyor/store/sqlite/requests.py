"""Requests: what a user asked for, created with its job in one transaction (run on the
store's thread, inside the transaction the store opened)."""

from __future__ import annotations

import sqlite3

from conveyor.store.filters import ListQuery
from conveyor.store.records import (
    Job,
    JobState,
    NewRequest,
    Request,
    RequestFilter,
    StoredRequest,
)
from conveyor.store.sqlite import rows
from conveyor.store.sqlite.enqueue import insert_jobs
from conveyor.store.sqlite.queries import PARTS, execute
from conveyor.store.sqlite.rows import dumps

_LIST = ListQuery(PARTS, "list_requests", RequestFilter, "?")


def create(conn: sqlite3.Connection, now: float, new: NewRequest, *, log: bool) -> StoredRequest:
    """The request and its job (with ``log``, the job's ``job.queued``), or the earlier
    request its idempotency key names."""
    # The write lock is held from the start, so two calls with one key cannot both miss
    # the look-up.
    if new.idempotency_key is not None:
        key = {"tenant_id": new.tenant_id, "idempotency_key": new.idempotency_key}
        found = execute(conn, "find_request_by_key", key).fetchone()
        if found is not None:
            return _stored(conn, now, _by_id(conn, found[0], new.tenant_id), created=False)
    (enqueued,) = insert_jobs(conn, now, [new.job], log=log)
    values = {
        "tenant_id": new.tenant_id,
        "caller_id": new.caller_id,
        "kind": new.kind,
        "input": dumps(new.input),
        "job_id": enqueued.id,
        "idempotency_key": new.idempotency_key,
        "http_request_id": new.http_request_id,
        "now": now,
    }
    (request_id,) = execute(conn, "insert_request", values).fetchone()
    return _stored(conn, now, _by_id(conn, request_id, new.tenant_id), created=True)


def get(conn: sqlite3.Connection, request_id: int, tenant_id: str) -> Request | None:
    """The tenant's request, if it exists and its job was not pruned."""
    row = execute(conn, "get_request", {"id": request_id, "tenant_id": tenant_id}).fetchone()
    # The job's first column (its id) is NULL when the LEFT JOIN found no job.
    if row is None or row[rows.REQUEST.width - rows.JOB.width] is None:
        return None
    return rows.request(row)


def list_requests(conn: sqlite3.Connection, flt: RequestFilter) -> list[Request]:
    statement, args = _LIST.statement(flt)
    return [rows.request(row) for row in conn.execute(statement.sql, args)]


def jobs_ahead(conn: sqlite3.Connection, now: float, job: Job) -> int:
    """Queued, due jobs of the job's queue and tenant that will be claimed before it."""
    values = {
        "queue": job.queue,
        "tenant_id": job.tenant_id,
        "now": now,
        "priority": job.priority,
        "run_at": job.run_at,
        "id": job.id,
    }
    return int(execute(conn, "queue_position", values).fetchone()[0])


def _by_id(conn: sqlite3.Connection, request_id: int, tenant_id: str) -> Request:
    values = {"id": request_id, "tenant_id": tenant_id}
    return rows.request(execute(conn, "get_request", values).fetchone())


def _stored(conn: sqlite3.Connection, now: float, request: Request, created: bool) -> StoredRequest:
    queued = request.job.state is JobState.QUEUED
    return StoredRequest(request, created, jobs_ahead(conn, now, request.job) if queued else None)
