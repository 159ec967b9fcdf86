"""SQLite rows as records: each row type's column table (see :mod:`conveyor.store.columns`).

SQLite hands back what was written: times as REAL Unix seconds, JSON as text,
booleans as integers.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor.store.columns import Columns, column_list
from conveyor.store.records import JOB_COLUMNS, ErrorEntry, Job, JobState, Request, WorkerInfo
from conveyor.store.sqlite.queries import PARTS


def dumps(value: Any) -> str:
    """JSON text, as the JSON columns hold it."""
    return orjson.dumps(value).decode()


def _json_or_none(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _errors(text: str) -> tuple[ErrorEntry, ...]:
    return tuple(ErrorEntry.from_json(e) for e in orjson.loads(text))


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(orjson.loads(text))


JOB = Columns(
    Job,
    [
        ("id", None),
        ("tenant_id", None),
        ("queue", None),
        ("kind", None),
        ("priority", None),
        ("state", JobState),
        ("payload", orjson.loads),
        ("result", _json_or_none),
        ("attempt", None),
        ("max_attempts", None),
        ("run_at", None),
        ("timeout_s", None),
        ("unique_key", None),
        ("locked_by", None),
        ("lease_expires_at", None),
        ("errors", _errors),
        ("progress", None),
        ("progress_message", None),
        ("cancel_requested", bool),
        ("meta", orjson.loads),
        ("created_at", None),
        ("started_at", None),
        ("finished_at", None),
    ],
)
"""A ``SELECT *`` of ``conveyor_jobs``: the table's columns, which the store checks at
migration to be :data:`~conveyor.store.records.JOB_COLUMNS`."""
JOB.check(JOB_COLUMNS, "conveyor.store.records.JOB_COLUMNS")

REQUEST = Columns(
    Request,
    [
        ("id", None),
        ("tenant_id", None),
        ("caller_id", None),
        ("kind", None),
        ("input", orjson.loads),
        ("idempotency_key", None),
        ("http_request_id", None),
        ("created_at", None),
    ],
)
"""The part ``request_columns``: a request's columns, then its job's."""
if column_list(PARTS["request_columns"]) != [*REQUEST.names, "*"]:
    raise ValueError(f"part request_columns: not {REQUEST.names} then the job's (j.*)")

WORKER = Columns(
    WorkerInfo,
    [
        ("id", None),
        ("hostname", None),
        ("pid", None),
        ("queues", orjson.loads),
        ("started_at", None),
        ("last_seen_at", None),
        ("expires_at", None),
        ("memory_mb", None),
        ("kinds", _kinds),
    ],
)
WORKER.check(column_list(PARTS["worker_columns"]), "part worker_columns")


def job_or_none(row: Any) -> Job | None:
    return JOB.decode(row) if row is not None else None


def request(row: Any) -> Request:
    """A row of the part ``request_columns``: the request, then its job."""
    return REQUEST.decode(row, 0, JOB.decode(row, REQUEST.width))
