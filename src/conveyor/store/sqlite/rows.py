"""SQLite rows as records: each row type's column table (:mod:`conveyor.store.columns`).

SQLite hands back what was written: times as REAL Unix seconds, JSON as text,
booleans as integers.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor.store.columns import (
    Column,
    Table,
    column_list,
    errors_from_json,
    json_or_none,
    tuple_from_json,
)
from conveyor.store.records import JOB_COLUMNS, Job, JobState, Request, WorkerInfo
from conveyor.store.sqlite.queries import PARTS


def dumps(value: Any) -> str:
    """JSON text, as the JSON columns hold it."""
    return orjson.dumps(value).decode()


JOB: Table[Job] = Table(
    Job,
    (
        Column("id"),
        Column("tenant_id"),
        Column("queue"),
        Column("kind"),
        Column("priority"),
        Column("state", JobState),
        Column("payload", orjson.loads),
        Column("result", json_or_none),
        Column("attempt"),
        Column("max_attempts"),
        Column("run_at"),
        Column("timeout_s"),
        Column("unique_key"),
        Column("locked_by"),
        Column("lease_expires_at"),
        Column("errors", errors_from_json),
        Column("progress"),
        Column("progress_message"),
        Column("cancel_requested", bool),
        Column("meta", orjson.loads),
        Column("created_at"),
        Column("started_at"),
        Column("finished_at"),
    ),
)
"""A ``SELECT *`` of ``conveyor_jobs``: the table's columns, which the store checks at
migration to be :data:`~conveyor.store.records.JOB_COLUMNS`."""
JOB.check(JOB_COLUMNS, "conveyor.store.records.JOB_COLUMNS")

REQUEST: Table[Request] = Table(
    Request,
    (
        Column("id"),
        Column("tenant_id"),
        Column("caller_id"),
        Column("kind"),
        Column("input", orjson.loads),
        Column("idempotency_key"),
        Column("http_request_id"),
        Column("created_at"),
        Column("job", JOB),
    ),
)
"""The part ``request_columns``: a request's columns, then its job's."""
if column_list(PARTS["request_columns"]) != [*REQUEST.names[:-1], "*"]:
    raise ValueError(f"part request_columns: not {REQUEST.names[:-1]} then the job's (j.*)")

WORKER: Table[WorkerInfo] = Table(
    WorkerInfo,
    (
        Column("id"),
        Column("hostname"),
        Column("pid"),
        Column("queues", orjson.loads),
        Column("started_at"),
        Column("last_seen_at"),
        Column("expires_at"),
        Column("memory_mb"),
        Column("kinds", tuple_from_json),
    ),
)
WORKER.check(column_list(PARTS["worker_columns"]), "part worker_columns")


def job_or_none(row: Any) -> Job | None:
    return JOB.decode(row) if row is not None else None


def request(row: Any) -> Request:
    """A row of the part ``request_columns``: the request, then its job."""
    return REQUEST.decode(row, 0)
