"""Rows of the PostgreSQL store as records, each shape decoded from one column table
(:mod:`conveyor.store.columns`). asyncpg gives times as datetimes and JSON as text; the
jobs table also says how a handoff notice carries each column, and the events table how
a live-events notice does.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from conveyor.store.base import JobHandedOff, LiveEvents
from conveyor.store.columns import (
    Column,
    Fixed,
    Table,
    errors_from_json,
    json_or_none,
    tuple_from_json,
)
from conveyor.store.records import (
    JOB_COLUMNS,
    Event,
    EventType,
    Job,
    JobState,
    Request,
    WorkerInfo,
)


def _time(value: datetime) -> float:
    return value.timestamp()


def time_or_none(value: datetime | None) -> float | None:
    """A timestamp as Unix seconds, None kept."""
    return None if value is None else value.timestamp()


JOBS: Table[Job] = Table(
    Job,
    (
        Column("id"),
        Column("tenant_id"),
        Column("queue"),
        Column("kind"),
        Column("priority"),
        Column("state", JobState, handed_off=Fixed(JobState.RUNNING)),
        Column("payload", orjson.loads),
        Column("result", json_or_none, handed_off=Fixed(None)),
        Column("attempt"),
        Column("max_attempts"),
        Column("run_at", _time, handed_off=float),
        Column("timeout_s"),
        Column("unique_key"),
        Column("locked_by"),
        Column("lease_expires_at", time_or_none, handed_off=float),
        Column("errors", errors_from_json, handed_off=Fixed(())),
        Column("progress", handed_off=Fixed(None)),
        Column("progress_message", handed_off=Fixed(None)),
        Column("cancel_requested", handed_off=Fixed(False)),
        Column("meta", orjson.loads),
        Column("created_at", _time, handed_off=float),
        Column("started_at", time_or_none, handed_off=float),
        Column("finished_at", time_or_none, handed_off=Fixed(None)),
    ),
)
"""``conveyor_jobs``, in table order (``SELECT *``, ``RETURNING *``)."""

if tuple(c.name for c in JOBS.columns) != JOB_COLUMNS:
    raise ValueError(f"the job table's columns differ from JOB_COLUMNS {JOB_COLUMNS}")

HANDOFF_COLUMNS = (
    "locked_by",
    "id",
    "attempt",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "payload",
    "max_attempts",
    "run_at",
    "timeout_s",
    "unique_key",
    "lease_expires_at",
    "meta",
    "created_at",
    "started_at",
)
"""The columns a handoff notice carries, in its order (the json_build_array of the part
notify_or_hand_off in enqueue.sql); a notice too large for NOTIFY carries the first three
only."""

_SHORT_HANDOFF = 3
_handed_off_job = JOBS.notice_decoder(HANDOFF_COLUMNS)


def decode_handoff(value: str) -> JobHandedOff:
    """A handoff notice's payload (after ``h:``)."""
    carried = orjson.loads(value)
    worker_id, job_id, attempt = carried[:_SHORT_HANDOFF]
    if len(carried) == _SHORT_HANDOFF:
        return JobHandedOff(worker_id, job_id, attempt, None)
    return JobHandedOff(worker_id, job_id, attempt, _handed_off_job(carried))


REQUESTS: Table[Request] = Table(
    Request,
    (
        Column("id"),
        Column("tenant_id"),
        Column("caller_id"),
        Column("kind"),
        Column("input", orjson.loads),
        Column("idempotency_key"),
        Column("http_request_id"),
        Column("created_at", _time),
        Column("job", JOBS),
    ),
)
"""A request row followed by its job's columns (the shape of requests.sql's
``request_columns``)."""

WORKERS: Table[WorkerInfo] = Table(
    WorkerInfo,
    (
        Column("id"),
        Column("hostname"),
        Column("pid"),
        Column("queues", orjson.loads),
        Column("started_at", _time),
        Column("last_seen_at", _time),
        Column("expires_at", _time),
        Column("memory_mb"),
        Column("kinds", tuple_from_json),
    ),
)
"""``conveyor_workers`` as list_workers selects it."""

EVENTS: Table[Event] = Table(
    Event,
    (
        Column("id", handed_off=Fixed(None)),
        Column("tenant_id"),
        Column("type", EventType, handed_off=EventType),
        Column("job_id"),
        Column("kind"),
        Column("queue"),
        Column("attempt"),
        Column("body", orjson.loads),
        Column("at", _time),
        Column("request_id", handed_off=Fixed(None)),
    ),
)
"""``conveyor_events`` as read_events selects it (events.sql), with the request's id; in
a live-events notice, the columns of :data:`LIVE_COLUMNS`."""

LIVE_COLUMNS = ("tenant_id", "type", "job_id", "kind", "queue", "attempt", "body", "at")
"""What a live-events notice carries of each event, in this order (a JSON array); a live
event has no id and no request."""

_live_event = EVENTS.notice_decoder(LIVE_COLUMNS)


def encode_live_event(event: Event) -> bytes:
    """One live event as a notice carries it: the JSON array of :data:`LIVE_COLUMNS`."""
    return orjson.dumps(
        [
            event.tenant_id,
            event.type.value,
            event.job_id,
            event.kind,
            event.queue,
            event.attempt,
            event.body,
            event.at,
        ]
    )


def decode_live(value: str) -> LiveEvents:
    """A live-events notice's payload (after ``v:``): a JSON array of encoded events."""
    return LiveEvents(tuple(_live_event(carried) for carried in orjson.loads(value)))
