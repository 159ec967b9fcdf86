"""The API's request and response bodies, and their construction from store records.

Times are ISO 8601 in UTC with the offset and microseconds
(``2026-12-02T06:44:07.123456+00:00``, :data:`Timestamp`). A job's ``state`` is one of
``queued``, ``running``, ``completed``, ``failed``, ``cancelled`` (a queued job whose start
was pushed back, a retry's backoff, is still ``queued``); a request's ``status``, the
seed's word, is its job's state.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, create_model

from conveyor.engine.kinds import Registry
from conveyor.engine.limits import MAX_CONCURRENCY
from conveyor.store.records import JSON, ErrorEntry, Job, JobState, QueueStats, Request

_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


Timestamp = Annotated[
    datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]
"""A time in a response: ISO 8601 in UTC with its offset and microseconds,
``2026-12-02T06:44:07.123456+00:00``, as the CLI prints times
(:func:`conveyor.store.records.iso_time`)."""


def utc(ts: float | None) -> datetime | None:
    """Unix seconds as an aware UTC datetime (None stays None); see :func:`at_utc`."""
    return None if ts is None else at_utc(ts)


def at_utc(ts: float) -> datetime:
    """Unix seconds as an aware UTC datetime. A time past what a datetime can hold
    (stored before the limits of :mod:`conveyor.engine.limits` refused it, such as a
    ``--delay 1e30``) shows as the latest or earliest datetime, so that the page holding
    it still renders."""
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):
        return _LATEST if ts > 0 else _EARLIEST


# -- POST /v1/requests body --------------------------------------------------------------
def _model_name(kind: str, taken: set[str]) -> str:
    base = "Create_" + re.sub(r"[^A-Za-z0-9]+", "_", kind).strip("_")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def create_request_body(kinds: Registry) -> Any:
    """The body of ``POST /v1/requests``: ``{"kind": ..., "input": ...}`` as a union
    tagged by ``kind``, one member per registered kind, whose ``input`` is the kind's
    input model (an object for kinds without one). The OpenAPI document therefore shows
    every kind's input schema, and validation names the field at fault.

    Built from the kinds registered when the app is created; kinds registered later are
    not accepted until the app is built again.
    """
    taken: set[str] = set()
    members: list[Any] = []
    for kind in sorted(kinds, key=lambda k: k.name):
        doc = (kind.handler.__doc__ or "").strip().splitlines()
        # The kind's model with unknown fields forbidden (additionalProperties: false).
        model = kind.payload_model
        input_type: Any = model if model is not None else dict[str, Any]
        input_field: Any = (
            (input_type, ...)
            if model is not None
            else (input_type, Field(default_factory=dict, description="Any JSON object."))
        )
        tag: Any = Literal[kind.name]
        members.append(
            create_model(
                _model_name(kind.name, taken),
                __config__=ConfigDict(extra="forbid", title=f"Create {kind.name}"),
                __doc__=f"A {kind.name} request (queue {kind.queue}, priority "
                f"{kind.priority}). {doc[0] if doc else ''}".strip(),
                kind=(tag, ...),
                input=input_field,
            )
        )
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="kind")]  # noqa: UP007


# -- errors and assets -------------------------------------------------------------------
class AttemptError(BaseModel):
    """One failed attempt."""

    at: Timestamp
    attempt: int
    type: str
    message: str

    @classmethod
    def of(cls, e: ErrorEntry) -> AttemptError:
        return cls(at=at_utc(e.at), attempt=e.attempt, type=e.type, message=e.message)


class JobAttemptError(AttemptError):
    """One failed attempt, with its traceback (operators only)."""

    traceback: str | None = None

    @classmethod
    def of(cls, e: ErrorEntry) -> JobAttemptError:
        return cls(
            at=at_utc(e.at),
            attempt=e.attempt,
            type=e.type,
            message=e.message,
            traceback=e.traceback,
        )


class Asset(BaseModel):
    """A URL found in a request's result."""

    field: str = Field(description="Where in the result, e.g. 'video.thumbnail_url'.")
    url: str


_URL_KEY = re.compile(r"(?:^|[_\-.])(?:url|Url|URL)$|[a-z0-9]Url$")
"""``url``, ``image_url``, ``PDF_URL``, ``asset-url``, ``assetUrl``; not ``curl``."""
_MAX_DEPTH = 5
_MAX_ASSETS = 50


def find_assets(result: JSON) -> list[Asset]:
    """The asset URLs of a result: every ``http(s)://`` string held by a key named
    ``url`` or ending in ``_url``/``Url`` (``thumbnail_url``, ``assetUrl``), searched
    through nested objects and lists up to five levels deep; at most 50, sorted by
    field (PostgreSQL's jsonb does not keep an object's key order)."""
    found: list[Asset] = []

    def walk(value: JSON, path: str, depth: int, key: str | None) -> None:
        if len(found) >= _MAX_ASSETS or depth > _MAX_DEPTH:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k), depth + 1, str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]", depth + 1, key)
        elif (
            isinstance(value, str)
            and key is not None
            and _URL_KEY.search(key)
            and value.startswith(("http://", "https://"))
        ):
            found.append(Asset(field=path, url=value))

    walk(result, "", 0, None)
    return sorted(found, key=lambda asset: asset.field)


# -- requests ----------------------------------------------------------------------------
class RequestAccepted(BaseModel):
    """The answer to a submission: 202 when created, 200 for an idempotent repeat."""

    request_id: int
    job_id: int
    kind: str
    status: JobState
    queue: str
    queue_position: int | None = Field(
        description="Jobs that will start before this one (0: it is next); null once it "
        "is no longer queued."
    )
    estimated_wait_seconds: float | None = Field(
        description="Estimated seconds until it starts, from the queue's median run time "
        "over recent jobs and its free slots; null when unknown (no run history, no "
        "worker serving the queue, the queue paused) or no longer queued."
    )
    created_at: Timestamp


class RequestOut(BaseModel):
    """A request and how its job is doing."""

    id: int
    kind: str
    status: JobState
    input: JSON
    progress: float | None
    progress_message: str | None
    result: JSON
    errors: list[AttemptError]
    assets: list[Asset] = Field(
        description="The result's asset URLs: every http(s) string under a key named url "
        "or ending in _url/Url (image_url, assetUrl), up to five levels deep."
    )
    job_id: int
    queue: str
    attempt: int
    max_attempts: int
    cancel_requested: bool
    http_request_id: str | None = Field(description="X-Request-ID of the submitting call.")
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None

    @classmethod
    def of(cls, r: Request) -> RequestOut:
        job = r.job
        return cls(
            id=r.id,
            kind=r.kind,
            status=job.state,
            input=r.input,
            progress=job.progress,
            progress_message=job.progress_message,
            result=job.result,
            errors=[AttemptError.of(e) for e in job.errors],
            assets=find_assets(job.result),
            job_id=job.id,
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            http_request_id=r.http_request_id,
            created_at=at_utc(r.created_at),
            started_at=utc(job.started_at),
            finished_at=utc(job.finished_at),
        )


class RequestPage(BaseModel):
    items: list[RequestOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


# -- jobs --------------------------------------------------------------------------------
class JobOut(BaseModel):
    """A job as operators see it, with its full error history."""

    id: int
    tenant_id: str
    queue: str
    kind: str
    priority: int
    state: JobState
    payload: JSON
    result: JSON
    attempt: int
    max_attempts: int
    run_at: Timestamp
    timeout_s: float | None
    unique_key: str | None
    locked_by: str | None
    lease_expires_at: Timestamp | None
    errors: list[JobAttemptError]
    progress: float | None
    progress_message: str | None
    cancel_requested: bool
    meta: dict[str, JSON]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    served_by: list[str] | None = Field(
        default=None,
        description="Shown for a queued job by GET /v1/jobs/{id}: the ids of the live "
        "workers that would run it (they serve its queue and its kind); empty: none does, "
        "and it waits until one starts. Null elsewhere.",
    )

    @classmethod
    def of(cls, j: Job, served_by: list[str] | None = None) -> JobOut:
        return cls(
            id=j.id,
            tenant_id=j.tenant_id,
            queue=j.queue,
            kind=j.kind,
            priority=j.priority,
            state=j.state,
            payload=j.payload,
            result=j.result,
            attempt=j.attempt,
            max_attempts=j.max_attempts,
            run_at=at_utc(j.run_at),
            timeout_s=j.timeout_s,
            unique_key=j.unique_key,
            locked_by=j.locked_by,
            lease_expires_at=utc(j.lease_expires_at),
            errors=[JobAttemptError.of(e) for e in j.errors],
            progress=j.progress,
            progress_message=j.progress_message,
            cancel_requested=j.cancel_requested,
            meta=j.meta,
            created_at=at_utc(j.created_at),
            started_at=utc(j.started_at),
            finished_at=utc(j.finished_at),
            served_by=served_by,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


# -- queues ------------------------------------------------------------------------------
class QueueOut(BaseModel):
    """One queue's statistics."""

    name: str
    paused: bool
    counts: dict[str, int] = Field(description="Jobs per state; every state is present.")
    due: int = Field(description="Queued jobs that may start now (queued minus scheduled).")
    scheduled: int = Field(description="Queued jobs whose start lies in the future.")
    running: int
    limit: int | None = Field(
        description="How many may run at once: the cluster-wide limit if set, else the sum "
        "of the live workers' limits; null: no limit and no worker."
    )
    cluster_limit: int | None
    oldest_queued_age_s: float | None
    completed_last_minute: int
    failed_last_minute: int
    run_time_p50_s: float | None
    run_time_p95_s: float | None
    served_kinds: dict[str, list[str]] = Field(
        description="Kind -> ids of the live workers that claim it in this queue."
    )
    unserved_kinds: dict[str, int] = Field(
        description="Kind -> queued jobs that no live worker runs: they wait, queued, until "
        "a worker that has the kind starts."
    )

    @classmethod
    def of(cls, s: QueueStats) -> QueueOut:
        return cls(
            name=s.name,
            paused=s.paused,
            counts=dict(s.counts),
            due=due(s),
            scheduled=s.scheduled,
            running=s.running,
            limit=s.limit,
            cluster_limit=s.cluster_limit,
            oldest_queued_age_s=s.oldest_queued_age_s,
            completed_last_minute=s.completed_last_minute,
            failed_last_minute=s.failed_last_minute,
            run_time_p50_s=s.run_time_p50_s,
            run_time_p95_s=s.run_time_p95_s,
            served_kinds={kind: list(ids) for kind, ids in s.served_kinds.items()},
            unserved_kinds=dict(s.unserved_kinds),
        )


class QueueLimitIn(BaseModel):
    """A queue's cluster-wide limit."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(
        ge=1,
        le=MAX_CONCURRENCY,
        description="Jobs of the queue that may run at once across all workers; null: no cap.",
    )


def due(stats: QueueStats) -> int:
    """Queued jobs that may start now."""
    return max(0, stats.counts.get(JobState.QUEUED.value, 0) - stats.scheduled)


class QueueList(BaseModel):
    queues: list[QueueOut]


# -- health ------------------------------------------------------------------------------
class MemoryOut(BaseModel):
    """The API process's memory in MiB (the seed's ``memory.node``: the seed's API ran on
    Node.js)."""

    rss: float = Field(description="Resident set size.")
    heapUsed: float = Field(
        description="Private resident memory (RSS minus pages shared with other "
        "processes, such as libraries): Python's nearest equivalent of Node's heapUsed."
    )
    thresholdMB: float | None = Field(
        description="CONVEYOR_MAX_MEMORY_MB: above it POSTs answer 503; null: disabled."
    )


class WorkerMemory(BaseModel):
    id: str = Field(description="The worker's identity, host:pid:random.")
    memory_mb: float | None = Field(description="Its RSS in MiB; null: not reported yet.")


class WorkersMemory(BaseModel):
    """The workers' memory (the seed's ``memory.python``: its workers ran in Python), as
    each live worker last wrote it with its heartbeat (every
    ``CONVEYOR_HEARTBEAT_INTERVAL`` seconds)."""

    memory_mb: float | None = Field(
        description="RSS in MiB of the live worker using the most (each worker's limit is "
        "its own); null: no live worker has reported."
    )
    status: Literal["ok", "high", "unknown"] = Field(
        description="high: a worker is above CONVEYOR_MAX_MEMORY_MB (it stops fetching "
        "jobs until it falls); unknown: no live worker has reported."
    )
    workers: list[WorkerMemory]


class HealthMemory(BaseModel):
    node: MemoryOut
    python: WorkersMemory


class QueueHealth(BaseModel):
    waiting: int = Field(description="Queued jobs: due ones and scheduled ones.")
    activeJobs: int = Field(description="Running jobs.")
    due: int = Field(description="Queued jobs that may start now.")
    scheduled: int = Field(description="Queued jobs whose start lies in the future.")
    paused: bool


class HealthDetail(BaseModel):
    memory: HealthMemory
    queues: dict[str, QueueHealth] = Field(
        description="Per queue (the seed's job types are its queues: video, qa, ...)."
    )
    database: Literal["ok", "unreachable"]


class HealthOut(BaseModel):
    """The seed's ``GET /health`` shape."""

    status: Literal["healthy", "degraded"] = Field(
        description="degraded: the database is unreachable, or the API's or a worker's "
        "memory is above its threshold."
    )
    timestamp: Timestamp
    health: HealthDetail


class ReadyOut(BaseModel):
    """Ready: the database answers and its schema is current (else 503, a Problem)."""

    status: Literal["ready"]
    schema_version: int
    latest_schema_version: int


# -- errors ------------------------------------------------------------------------------
class Problem(BaseModel):
    """An error answer (422 answers carry a list of field errors as ``detail``)."""

    detail: Any
    request_id: str | None = None
