"""The data that crosses the store boundary: job rows, outcomes, statistics.

These types sit at the bottom of the layer stack so that every store and the engine share
one vocabulary. They are plain dataclasses, read-only by convention. The four built once
per job on the hot path (NewJob, Job, Outcome, Progress) are not frozen: a frozen
dataclass of a dozen fields costs several times as much to build, a few percent of a
job's whole cost in a worker or a bulk enqueue. Enqueued, returned once per job of a bulk
enqueue, is a named tuple for the same reason.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple


def iso_time(ts: float) -> str:
    """Unix seconds as the one time format Conveyor shows (the API, the CLI's text and
    JSON): ISO 8601 in UTC with its offset and microseconds,
    ``2026-12-02T06:44:07.123456+00:00``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def iso_or_none(ts: float | None) -> str | None:
    """:func:`iso_time`, with None kept."""
    return None if ts is None else iso_time(ts)


DEFAULT_TENANT = "default"
"""Tenant of every job until the accounts issue brings real tenants."""

JSON = Any
"""A JSON-serialisable value (dict, list, str, int, float, bool or None)."""


class JobState(enum.StrEnum):
    """Where a job is in its life. See docs/architecture.md for the state machine.

    ``queued`` covers scheduled jobs too: a queued job whose ``run_at`` lies in the future
    is not claimable until then.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One failed attempt, appended to the job's error history."""

    at: float
    attempt: int
    type: str
    message: str
    traceback: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "at": self.at,
            "attempt": self.attempt,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorEntry:
        return cls(
            at=float(data["at"]),
            attempt=int(data["attempt"]),
            type=str(data["type"]),
            message=str(data["message"]),
            traceback=data.get("traceback"),
        )


@dataclass(slots=True)
class NewJob:
    """A job to insert. Every field is resolved: defaults come from the kind, not the store."""

    kind: str
    queue: str
    payload: JSON
    priority: int
    max_attempts: int
    timeout_s: float | None
    run_at: float | None = None
    """Absolute time (Unix seconds) the job becomes due; None means now plus ``delay_s``."""
    delay_s: float = 0.0
    """Seconds from the store's clock, so a scheduled job does not depend on the enqueuer's."""
    unique_key: str | None = None
    tenant_id: str = DEFAULT_TENANT
    meta: dict[str, JSON] = field(default_factory=dict)


JOB_COLUMNS = (
    "id",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "state",
    "payload",
    "result",
    "attempt",
    "max_attempts",
    "run_at",
    "timeout_s",
    "unique_key",
    "locked_by",
    "lease_expires_at",
    "errors",
    "progress",
    "progress_message",
    "cancel_requested",
    "meta",
    "created_at",
    "started_at",
    "finished_at",
)
"""The columns of the jobs table, in table order, as every store reads them."""


@dataclass(slots=True)
class Job:
    """A job row as stored. Times are Unix seconds (UTC)."""

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
    run_at: float
    timeout_s: float | None
    unique_key: str | None
    locked_by: str | None
    lease_expires_at: float | None
    errors: tuple[ErrorEntry, ...]
    progress: float | None
    progress_message: str | None
    cancel_requested: bool
    meta: dict[str, JSON]
    created_at: float
    started_at: float | None
    finished_at: float | None

    def to_json(self) -> dict[str, JSON]:
        """The job as JSON-ready data (CLI ``--json``), times as :func:`iso_time`."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "queue": self.queue,
            "kind": self.kind,
            "priority": self.priority,
            "state": self.state.value,
            "payload": self.payload,
            "result": self.result,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "run_at": iso_time(self.run_at),
            "timeout_s": self.timeout_s,
            "unique_key": self.unique_key,
            "locked_by": self.locked_by,
            "lease_expires_at": iso_or_none(self.lease_expires_at),
            "errors": [{**e.to_json(), "at": iso_time(e.at)} for e in self.errors],
            "progress": self.progress,
            "progress_message": self.progress_message,
            "cancel_requested": self.cancel_requested,
            "meta": self.meta,
            "created_at": iso_time(self.created_at),
            "started_at": iso_or_none(self.started_at),
            "finished_at": iso_or_none(self.finished_at),
        }


class OutcomeKind(enum.StrEnum):
    """What a worker reports about an attempt it ran."""

    COMPLETED = "completed"
    RETRY = "retry"
    """The attempt failed and the job goes back to ``queued`` at ``run_at``."""
    FAILED = "failed"
    """The attempt failed and no attempt is left, or the error is not retryable."""
    CANCELLED = "cancelled"
    """The job was cancelled while running and its task has stopped."""
    RELEASED = "released"
    """Handed back at shutdown: ``queued`` again and the attempt is not charged."""


@dataclass(slots=True)
class Outcome:
    """The end of one attempt. Applied only if the job is still ``running`` under the same
    attempt and owner, so a late report can never overwrite a rescue or a cancel."""

    job_id: int
    attempt: int
    kind: OutcomeKind
    queue: str
    result: JSON = None
    error: ErrorEntry | None = None
    retry_in_s: float = 0.0
    """For ``RETRY``: seconds from the store's clock until the job is due again."""
    result_json: str | None = None
    """For ``COMPLETED``: ``result`` already encoded as JSON by the executor (which checks
    it there); stores write it instead of encoding ``result`` again."""


@dataclass(slots=True)
class Progress:
    """The latest progress a running job reported; written with the owner guard."""

    job_id: int
    attempt: int
    fraction: float
    message: str | None


class Enqueued(NamedTuple):
    """The job an enqueue resolved to. ``created`` is False when ``unique_key`` matched a
    job that is still queued or running: that job is returned instead of a new one.

    A named tuple, not a frozen dataclass: cheaper to build."""

    id: int
    created: bool


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """How many jobs a worker can take now, per queue, and of which kinds."""

    worker_id: str
    slots: dict[str, int]
    lease_s: float
    kinds: tuple[str, ...] = field(kw_only=True)
    """The kinds the worker can run: only jobs of these are claimed (in every queue of
    ``slots``) or handed to its offers. Strict priority, then FIFO, holds across them."""


@dataclass(frozen=True, slots=True)
class RescueResult:
    requeued: tuple[int, ...]
    failed: tuple[int, ...]
    cancelled: tuple[int, ...]

    @property
    def total(self) -> int:
        return len(self.requeued) + len(self.failed) + len(self.cancelled)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, str, str]]) -> RescueResult:
        """Sort the (id, new state, queue) rows a rescue statement returned."""
        by_state: dict[str, list[int]] = {"queued": [], "failed": [], "cancelled": []}
        for job_id, state, _queue in rows:
            by_state[state].append(job_id)
        return cls(
            requeued=tuple(sorted(by_state["queued"])),
            failed=tuple(sorted(by_state["failed"])),
            cancelled=tuple(sorted(by_state["cancelled"])),
        )


@dataclass(frozen=True, slots=True)
class SettleResult:
    """What a settle-and-claim exchange did."""

    applied: tuple[bool, ...]
    """For each outcome in order: whether the guarded update matched."""
    claimed: tuple[Job, ...]
    next_run_at: float | None
    """The earliest ``run_at`` of a queued job in the claimed queues that is not yet due;
    None if there is none, and not looked up when the claim filled every slot (the worker
    claims again at once then)."""
    rescued: RescueResult | None = None
    """What the rescue did, when one was asked for."""
    offered: frozenset[str] = frozenset()
    """The claimed queues in which free slots are now offered for handoff (only a
    :class:`conveyor.store.base.HandoffQueue` asked for offers fills it)."""


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What a heartbeat learned about the jobs a worker believes it runs."""

    held: frozenset[int]
    """Jobs still running under this worker (leases renewed if asked)."""
    cancel_requested: frozenset[int]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker process: its identity is new at every start."""

    id: str
    hostname: str
    pid: int
    queues: dict[str, int]
    """Concurrency limit per queue served."""
    started_at: float = 0.0
    last_seen_at: float = 0.0
    expires_at: float = 0.0
    memory_mb: float | None = None
    """Resident memory (MiB) as of the last heartbeat that renewed the worker; None:
    not reported."""
    kinds: tuple[str, ...] = ()
    """The job kinds it runs (its registry), sorted; it claims only these."""

    def serves(self, queue: str, kind: str) -> bool:
        """Whether this worker claims jobs of ``kind`` in ``queue``."""
        return queue in self.queues and kind in self.kinds

    def to_json(self) -> dict[str, JSON]:
        return {
            "id": self.id,
            "hostname": self.hostname,
            "pid": self.pid,
            "queues": dict(self.queues),
            "kinds": list(self.kinds),
            "started_at": iso_time(self.started_at),
            "last_seen_at": iso_time(self.last_seen_at),
            "expires_at": iso_time(self.expires_at),
            "memory_mb": self.memory_mb,
        }


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's health, as `conveyor queues` and later `GET /v1/queues` show it."""

    name: str
    paused: bool
    counts: dict[str, int]
    """Jobs per state. Finished states count the jobs that finished in the last hour
    (``conveyor.store.stats.FINISHED_WINDOW_S``), and are absent when the statistics
    were read without them (``Store.queue_stats(finished=False)``); the others are always
    present."""
    scheduled: int
    """Queued jobs whose ``run_at`` is still in the future (included in counts['queued'])."""
    running: int
    limit: int | None
    """How many may run at once: the cluster-wide limit if one is set, else the sum of the
    limits of the live workers serving this queue (None: no limit and no worker)."""
    cluster_limit: int | None
    oldest_queued_age_s: float | None
    """Age of the oldest queued job that is due, measured from when it became due."""
    completed_last_minute: int
    failed_last_minute: int
    run_time_p50_s: float | None
    run_time_p95_s: float | None
    served_kinds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Kind -> the ids of the live workers that claim it in this queue."""
    unserved_kinds: dict[str, int] = field(default_factory=dict)
    """Kind -> queued jobs of this queue that no live worker can run: they wait (never
    fail) until a worker that has the kind starts."""

    def to_json(self) -> dict[str, JSON]:
        return {
            "name": self.name,
            "paused": self.paused,
            "counts": dict(self.counts),
            "scheduled": self.scheduled,
            "running": self.running,
            "limit": self.limit,
            "cluster_limit": self.cluster_limit,
            "oldest_queued_age_s": self.oldest_queued_age_s,
            "completed_last_minute": self.completed_last_minute,
            "failed_last_minute": self.failed_last_minute,
            "run_time_p50_s": self.run_time_p50_s,
            "run_time_p95_s": self.run_time_p95_s,
            "served_kinds": {k: list(ids) for k, ids in self.served_kinds.items()},
            "unserved_kinds": dict(self.unserved_kinds),
        }


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs to list, newest first. ``before_id`` is the cursor: the next page lists
    the jobs below the last id of the previous one."""

    state: JobState | None = None
    queue: str | None = None
    kind: str | None = None
    tenant_id: str | None = None
    limit: int = 50
    before_id: int | None = None
    created_after: float | None = None
    """Only jobs created at or after this time (Unix seconds)."""
    created_before: float | None = None
    """Only jobs created before this time (Unix seconds)."""


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request to create together with its job."""

    kind: str
    input: JSON
    caller_id: str
    job: NewJob
    idempotency_key: str | None = None
    http_request_id: str | None = None

    @property
    def tenant_id(self) -> str:
        return self.job.tenant_id


@dataclass(frozen=True, slots=True)
class Request:
    """What a user asked for. Its job carries the state, progress, result and errors."""

    id: int
    tenant_id: str
    caller_id: str
    kind: str
    input: JSON
    idempotency_key: str | None
    http_request_id: str | None
    created_at: float
    job: Job


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What creating a request resolved to."""

    request: Request
    created: bool
    """False when the idempotency key named an earlier request, which is returned."""
    queue_position: int | None
    """Queued, due jobs of the job's queue that will be claimed before it, read with the
    request; None when the job is not queued."""


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """Which requests of a tenant to list, newest first; ``before_id`` is the cursor."""

    tenant_id: str
    state: JobState | None = None
    kind: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 20
    before_id: int | None = None


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What one tenant may do in one queue (``conveyor limits``): None leaves it unlimited
    (weight None counts as 1)."""

    queue: str
    tenant_id: str
    concurrency: int | None
    """The tenant's jobs of the queue running at once, across all workers."""
    rate: str | None
    """Submissions into the queue, as the rate-limit notation ("100/minute"), enforced
    by the API at admission."""
    weight: int | None
    """The tenant's share of the queue's claims against the others': a tenant of weight 2
    is served twice as often as one of weight 1 while both have jobs waiting."""

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "tenant_id": self.tenant_id,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "weight": self.weight,
        }


class EventType(enum.StrEnum):
    """What an event tells of. The durable ones are written in the transaction of the
    change; ``job.started`` and ``job.progress`` are live only (never stored: a client
    resuming a stream does not get them again)."""

    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    RETRYING = "job.retrying"
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @property
    def durable(self) -> bool:
        return self not in LIVE_EVENT_TYPES


LIVE_EVENT_TYPES = frozenset({EventType.STARTED, EventType.PROGRESS})


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a user can be told about a job. ``id`` orders the durable events of
    every tenant (a stream resumes after one); a live event has none.

    ``body`` is small: ``job.queued`` {"priority", "run_at"}; ``job.retrying``
    {"error": {"type", "message"}, "run_at"}; ``job.failed`` {"error": {"type",
    "message"}}; ``job.completed`` and ``job.cancelled`` {}; ``job.started`` {"worker"};
    ``job.progress`` {"fraction", "message"}. An error's traceback is never in it."""

    id: int | None
    tenant_id: str
    type: EventType
    job_id: int
    kind: str
    queue: str
    attempt: int
    body: dict[str, JSON]
    at: float
    request_id: int | None = None
    """The request whose job this is (read with durable events; None for live ones and
    for jobs enqueued without a request)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "tenant_id": self.tenant_id,
            "job_id": self.job_id,
            "request_id": self.request_id,
            "kind": self.kind,
            "queue": self.queue,
            "attempt": self.attempt,
            "data": self.body,
            "at": iso_time(self.at),
        }


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which durable events to read: those after ``after_id`` (and at most
    ``through_id``), in id order."""

    after_id: int = 0
    through_id: int | None = None
    tenant_id: str | None = None
    """None: every tenant's (the API's hub, the dispatcher, operators)."""
    job_id: int | None = None
    kinds: tuple[str, ...] = ()
    """Empty: every kind."""
    types: tuple[EventType, ...] = ()
    """Empty: every type."""
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events read at once, with the state of the database's transactions then.

    Ids are taken when an event is inserted, and transactions commit in another order, so
    a reader can see id 9 while 8 is still to come (its transaction running) or will never
    come (rolled back). ``horizon`` tells them apart: a gap seen in a page read with
    horizon ``(_, next_a)`` is final once a later page has ``horizon[0] >= next_a``: every
    transaction that could hold a missing id has ended. A store whose ids are in commit
    order (SQLite) answers ``(1, 0)``: every gap is final at once."""

    events: tuple[Event, ...]
    horizon: tuple[int, int]
    """(the oldest transaction still running, the first transaction id not yet given)."""
