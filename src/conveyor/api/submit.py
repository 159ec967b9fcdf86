"""Submitting a request: admission (backpressure), creation with its job, and the
estimate of when it starts. Shared by ``POST /v1/requests`` and the seed's routes.

Admission refuses a submission (503 with ``Retry-After``) when

- this process's RSS is above ``CONVEYOR_MAX_MEMORY_MB`` (the seed's memory-based
  rejection; 0 disables it), or
- the target queue holds more than ``CONVEYOR_MAX_BACKLOG`` due jobs (queued minus
  scheduled), read from statistics at most one second old.

and a tenant over its submission rate cap for the queue (``conveyor limits set QUEUE
TENANT --rate 100/minute``, ``conveyor_tenant_limits.rate``) gets 429 with
``Retry-After``. The cap is counted by the API's rate limiter (:mod:`conveyor.api.ratelimit`),
so its budget is shared by every API process when the limiter's counters are in Redis, and
kept per process otherwise; like the limiter, it fails open when Redis is down. Each
process reads the caps from the store at most once a second (:class:`SubmissionCaps`), so
a new cap holds everywhere within a second; only a submission that passed the other checks
is counted.

An idempotent repeat is admitted by the same rules: under pressure it gets 503 and its
client retries later, which is safe because the key still names the first request.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi import Request as HttpRequest

from conveyor.api.access import tenant_of
from conveyor.api.deps import Caller
from conveyor.api.errors import Conflict, Overloaded
from conveyor.api.ratelimit import RateLimiter, record_limit
from conveyor.api.schemas import RequestAccepted, at_utc, due
from conveyor.api.state import ApiState
from conveyor.engine.client import Client
from conveyor.engine.errors import InvalidJob
from conveyor.engine.services import recent_rss_mb
from conveyor.logs import get_logger
from conveyor.store.base import DataRejected
from conveyor.store.records import JSON, NewRequest, QueueStats, Request

MEMORY_RETRY_AFTER_S = 10
BACKLOG_RETRY_AFTER_MAX_S = 300
CAPS_TTL_S = 1.0
"""How old this process's copy of the tenants' submission caps may grow."""

_log = get_logger("api")


@dataclass(frozen=True, slots=True)
class Submission:
    """A submitted (or, for an idempotent repeat, found) request and its prospects."""

    request: Request
    created: bool
    queue_position: int | None
    estimated_wait_s: float | None

    def accepted(self) -> RequestAccepted:
        job = self.request.job
        return RequestAccepted(
            request_id=self.request.id,
            job_id=job.id,
            kind=self.request.kind,
            status=job.state,
            queue=job.queue,
            queue_position=self.queue_position,
            estimated_wait_seconds=self.estimated_wait_s,
            created_at=at_utc(self.request.created_at),
        )


class SubmissionCaps:
    """The tenants' submission rate caps by (queue, tenant), as this process last read
    them: re-read when older than ``ttl``, by one query however many requests wait. A
    read that fails keeps the previous caps (logged), and is tried again ``ttl`` later."""

    def __init__(self, ttl: float = CAPS_TTL_S) -> None:
        self.ttl = ttl
        self._caps: dict[tuple[str, str], str] | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task[dict[tuple[str, str], str]] | None = None

    async def rate(self, client: Client, queue: str, tenant_id: str) -> str | None:
        """``tenant_id``'s cap on submissions into ``queue``, None when it has none."""
        caps = self._caps
        if caps is None or time.monotonic() - self._read_at >= self.ttl:
            caps = await self._read(client)
        return caps.get((queue, tenant_id))

    def invalidate(self) -> None:
        """Read the caps again at the next submission (after this process set one)."""
        self._read_at = float("-inf")

    async def _read(self, client: Client) -> dict[tuple[str, str], str]:
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(
                self._load(client), name="conveyor-submission-caps"
            )
        task = self._reading
        try:
            # Shielded: a request that goes away must not cancel the others' read.
            return await asyncio.shield(task)
        except Exception as exc:
            if self._caps is None:
                raise
            self._read_at = time.monotonic()
            _log.warning("tenant submission caps read failed; keeping the last", error=str(exc))
            return self._caps
        finally:
            if self._reading is task and task.done():
                self._reading = None

    async def _load(self, client: Client) -> dict[tuple[str, str], str]:
        found = await client.tenant_limits()
        self._caps = {(t.queue, t.tenant_id): t.rate for t in found if t.rate is not None}
        self._read_at = time.monotonic()
        return self._caps


_CAPS: weakref.WeakKeyDictionary[ApiState, SubmissionCaps] = weakref.WeakKeyDictionary()


def submission_caps(api: ApiState) -> SubmissionCaps:
    """The submission caps of the app whose state is ``api``."""
    caps = _CAPS.get(api)
    if caps is None:
        caps = _CAPS[api] = SubmissionCaps()
    return caps


def limiter_of(request: HttpRequest) -> RateLimiter | None:
    """The app's rate limiter, which counts the tenants' submissions (None: none installed)."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    return limiter


async def check_submission_rate(
    api: ApiState,
    limiter: RateLimiter | None,
    queue: str,
    tenant_id: str,
    http: HttpRequest | None = None,
) -> None:
    """Count a submission by ``tenant_id`` into ``queue`` against its cap there, if it
    has one; 429 with ``Retry-After`` when it is over."""
    if limiter is None:
        return
    rate = await submission_caps(api).rate(api.client, queue, tenant_id)
    if rate is None:
        return
    status = await limiter.hit_submission(queue, tenant_id, rate)
    if status is None:
        return
    if http is not None:
        record_limit(http.scope, status)
    if not status.allowed:
        raise HTTPException(
            status_code=429,
            detail=(
                f"tenant {tenant_id!r} may submit at most {status.limit} requests per "
                f"{status.window_s} seconds into queue {queue!r} (its rate cap, set by an "
                f"operator with conveyor limits); retry in {status.retry_after} seconds"
            ),
            headers=status.headers(),
        )


async def submit(
    api: ApiState,
    caller: Caller,
    kind: str,
    payload: JSON,
    *,
    idempotency_key: str | None,
    request_id: str,
    http: HttpRequest | None,
) -> Submission:
    """Admit, then create the request and its job in one transaction. ``http`` is the
    HTTP request, whose app's rate limiter counts the tenant's submissions into the
    queue (None: not counted, as for an app without a limiter).

    Raises :class:`Overloaded` (503), :class:`Conflict` (409: the idempotency key was
    used for a different request), ``HTTPException`` 429 (the tenant's submission cap
    for the queue), ``UnknownKind``/``InvalidJob`` (422) or ``StoreError`` (503).
    Nothing is stored when it raises.
    """
    client = api.client
    # The API serves registered kinds only (their input models are its schema): a kind
    # this process does not know is refused, although a Client would enqueue it by name.
    client.kinds.get(kind)
    # The request id rides in the job's meta so the worker's log lines for the job carry it.
    tenant = tenant_of(caller)
    job = client.prepare(kind, payload, tenant_id=tenant, meta={"request_id": request_id})
    check_memory(api.settings.max_memory_mb, api.settings.memory_check_interval)
    stats = (await api.stats.get(client)).get(job.queue)
    check_backlog(stats, api.settings.max_backlog)
    limiter = None if http is None else limiter_of(http)
    await check_submission_rate(api, limiter, job.queue, tenant, http)
    new = NewRequest(
        kind=kind,
        input=job.payload,
        caller_id=caller.caller_id,
        job=job,
        idempotency_key=idempotency_key,
        http_request_id=request_id,
    )
    try:
        stored = await client.store.create_request(new)
    except DataRejected as exc:
        # Valid JSON the database cannot hold, such as a \u0000 in a string on PostgreSQL.
        raise InvalidJob(f"input cannot be stored: {exc}") from exc
    request = stored.request
    if not stored.created and (request.kind != kind or request.input != job.payload):
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used for request {request.id} "
            "with a different kind or input; use a new key for a new request"
        )
    position = stored.queue_position
    wait = None if position is None else estimate_wait(position, stats)
    return Submission(request, stored.created, position, wait)


def check_memory(max_memory_mb: float, max_age: float) -> None:
    """Refuse work while this process's RSS, read at most ``max_age`` seconds ago, is
    above the threshold (0 disables)."""
    if max_memory_mb <= 0:
        return
    rss = recent_rss_mb(max_age)
    if rss > max_memory_mb:
        raise Overloaded(
            f"the server is low on memory ({rss:.0f} MB in use, limit {max_memory_mb:.0f} MB); "
            f"retry in {MEMORY_RETRY_AFTER_S} seconds",
            MEMORY_RETRY_AFTER_S,
        )


def check_backlog(stats: QueueStats | None, max_backlog: int) -> None:
    """Refuse work for a queue whose due backlog is above ``max_backlog``.

    ``Retry-After`` is the time the queue needs, at last minute's completion rate, to get
    back under the limit (1 s to 5 min; 60 s when nothing completed lately)."""
    if stats is None:
        return
    backlog = due(stats)
    if backlog <= max_backlog:
        return
    rate = stats.completed_last_minute / 60.0
    excess = backlog - max_backlog
    retry = math.ceil(excess / rate) if rate > 0 else 60
    retry = max(1, min(BACKLOG_RETRY_AFTER_MAX_S, retry))
    raise Overloaded(
        f"queue {stats.name!r} is full ({backlog} jobs waiting, limit {max_backlog}); "
        f"retry in {retry} seconds",
        retry,
    )


def estimate_wait(position: int, stats: QueueStats | None) -> float | None:
    """Seconds until a job with ``position`` jobs ahead of it starts, or None if unknown.

    With ``free`` slots open now it starts at once if fewer than ``free`` jobs are ahead;
    otherwise it waits for the jobs beyond the free slots, ``limit`` at a time, each
    taking the queue's median run time. Unknown: no statistics, a paused queue, no limit
    (no worker serves the queue), or no run time measured yet.
    """
    if stats is None or stats.paused or stats.limit is None:
        return None
    free = max(0, stats.limit - stats.running)
    if position < free:
        return 0.0
    if stats.run_time_p50_s is None:
        return None
    rounds = (position - free) // stats.limit + 1
    return round(rounds * stats.run_time_p50_s, 3)
