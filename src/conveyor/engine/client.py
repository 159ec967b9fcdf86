"""The client: enqueue jobs and look after them.

::

    async with await Client.connect("sqlite:///./conveyor.db") as client:
        job = await client.enqueue("reports.build", {"month": "2026-10"}, delay=60)
        print(await client.get(job.id))

A producer need not import the module that defines a kind: an enqueue by name of a kind
not registered in this process is stored as given (see :class:`Client`).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from types import TracebackType

from conveyor.config import Settings
from conveyor.engine import limits
from conveyor.engine.errors import (
    InvalidJob,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobNotFound,
    QueueNotFound,
)
from conveyor.engine.events import EventFollower, EventMatch, EventStream
from conveyor.engine.kinds import KIND_DEFAULT, KindDefault, Registry, registry, unregistered
from conveyor.engine.limits import check_kind_name, check_queue_name
from conveyor.store import DataRejected, Store, make_store
from conveyor.store.records import (
    DEFAULT_TENANT,
    JSON,
    Enqueued,
    Event,
    EventType,
    Job,
    JobFilter,
    JobState,
    NewJob,
    QueueStats,
    TenantLimits,
    WorkerInfo,
)

MAX_PAGE = 1000
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})
"""The states a retry applies to; a retry of any other is a :class:`JobConflict`."""
TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})
FINISHED = frozenset({JobState.COMPLETED, JobState.FAILED})
"""The states a cancel cannot change (a :class:`JobConflict`); cancelling a cancelled job
returns it as it is."""


def check_can_retry(job: Job) -> None:
    """Raise :class:`JobConflict` unless ``job`` is failed or cancelled."""
    if job.state not in RETRYABLE:
        raise JobConflict(
            f"job {job.id} is {job.state.value}; only failed or cancelled jobs can be retried",
            job.id,
            job.state.value,
        )


def check_can_cancel(job: Job) -> None:
    """Raise :class:`JobConflict` if ``job`` has completed or failed."""
    if job.state in FINISHED:
        raise JobConflict(f"job {job.id} has already {job.state.value}", job.id, job.state.value)


class Client:
    """Enqueue, inspect, cancel and retry jobs; pause and resume queues; set each
    tenant's limits in a queue.

    Options an enqueue leaves out come from the kind's registration when the kind is
    registered in this process (the module that defines it is imported); its payload is
    then validated against the kind's input model at enqueue, and bad input is never
    stored.

    A kind not registered here can still be enqueued by name, as a web app or another
    service does that does not import the workers' code (Celery's ``send_task``)::

        await client.enqueue("video.process", {"url": url}, queue="video", priority=2)

    Its options default to the system's: queue ``default``, priority 3, 3 attempts, a
    300 s timeout (:mod:`conveyor.engine.kinds`), so pass the queue and priority the kind
    is served with. The payload is stored as given (it must be JSON-serialisable) and
    validated by the worker that runs the job: a payload the kind's model rejects fails
    the job at once, not retried, with an error naming the fields. A job of a kind no live
    worker runs stays queued until one starts; ``conveyor queues`` shows it as unserved.
    """

    def __init__(
        self, store: Store, *, kinds: Registry | None = None, event_poll_interval: float = 2.0
    ) -> None:
        """``event_poll_interval``: how often :meth:`wait` and :meth:`events` read the log
        when the store cannot listen (``CONVEYOR_EVENT_POLL_INTERVAL``)."""
        self.store = store
        self.kinds = kinds if kinds is not None else registry
        self._owns_store = False
        self._follower: EventFollower | None = None
        self._event_poll_interval = event_poll_interval

    @classmethod
    async def connect(
        cls,
        url_or_settings: str | Settings | None = None,
        *,
        kinds: Registry | None = None,
        migrate: bool = True,
    ) -> Client:
        """Open the store named by a URL or settings (default: ``CONVEYOR_*`` settings),
        applying pending migrations unless ``migrate`` is False."""
        if isinstance(url_or_settings, Settings):
            settings = url_or_settings
        elif url_or_settings is None:
            settings = Settings()
        else:
            settings = Settings(database_url=url_or_settings)
        store = make_store(settings)
        await store.open()
        try:
            if migrate:
                await store.migrate()
        except BaseException:
            await store.close()
            raise
        client = cls(store, kinds=kinds, event_poll_interval=settings.event_poll_interval)
        client._owns_store = True
        return client

    async def close(self) -> None:
        """Stop following events; close the store if :meth:`connect` opened it."""
        if self._follower is not None:
            await self._follower.close()
            self._follower = None
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- enqueue -------------------------------------------------------------------------
    def prepare(
        self,
        kind: str,
        payload: JSON = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        max_attempts: int | None = None,
        timeout: float | KindDefault | None = KIND_DEFAULT,
        unique_key: str | None = None,
        tenant_id: str = DEFAULT_TENANT,
        meta: dict[str, JSON] | None = None,
    ) -> NewJob:
        """Validate an enqueue and resolve its defaults, without storing anything.

        A kind not registered in this process takes the system defaults for the options
        left out and its payload as given (see :class:`Client`). Raises
        :class:`InvalidJob` naming the option at fault.
        """
        spec = self.kinds.find(kind) or unregistered(check_kind_name(kind))
        return spec.new_job(
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            unique_key=unique_key,
            tenant_id=tenant_id,
            meta=meta,
        )

    async def enqueue(
        self,
        kind: str,
        payload: JSON = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | float | None = None,
        max_attempts: int | None = None,
        timeout: float | KindDefault | None = KIND_DEFAULT,
        unique_key: str | None = None,
        tenant_id: str = DEFAULT_TENANT,
        meta: dict[str, JSON] | None = None,
    ) -> Enqueued:
        """Store one job; it is durable when this returns.

        With ``unique_key``, while a job of the same tenant with that key is queued or
        running, that job is returned (``created=False``) instead of a new one.
        """
        new = self.prepare(
            kind,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            unique_key=unique_key,
            tenant_id=tenant_id,
            meta=meta,
        )
        return (await self._insert([new]))[0]

    async def enqueue_many(self, jobs: Iterable[NewJob]) -> list[Enqueued]:
        """Store many jobs (built with :meth:`prepare`) in one transaction: all or none."""
        return await self._insert(list(jobs))

    async def _insert(self, jobs: list[NewJob]) -> list[Enqueued]:
        try:
            return await self.store.enqueue(jobs)
        except DataRejected as exc:
            raise InvalidJob(f"the job cannot be stored: {exc}") from exc

    # -- wait and listen -----------------------------------------------------------------
    @property
    def follower(self) -> EventFollower:
        """This client's reader of the event log, shared by its waits and streams."""
        if self._follower is None:
            self._follower = EventFollower(self.store, poll_interval=self._event_poll_interval)
        return self._follower

    async def wait(
        self, job_id: int, *, timeout: float | None = None, tenant_id: str | None = None
    ) -> JSON:
        """Wait until the job has finished and return its result (Celery's
        ``AsyncResult.get``). Raises :class:`JobFailed` with its last error if it failed,
        :class:`JobCancelled` if it was cancelled, :class:`JobNotFound` for no such job
        (of ``tenant_id``), and :class:`TimeoutError` after ``timeout`` seconds (the job
        goes on). Woken by the job's event, not by polling: waiting costs no query; the
        store must write events (``CONVEYOR_EVENTS``, on by default)."""
        finished = asyncio.Event()
        match = EventMatch(tenant_id=tenant_id, job_id=job_id, types=TERMINAL_EVENTS)
        follower = self.follower
        sub = await follower.subscribe(match, lambda _event: finished.set())
        try:
            # Read after subscribing: a job that finishes in between is heard.
            job = await self.get(job_id, tenant_id=tenant_id)
            async with asyncio.timeout(timeout):
                while not job.state.finished:
                    await finished.wait()
                    finished.clear()
                    job = await self.get(job_id, tenant_id=tenant_id)
        finally:
            follower.unsubscribe(sub)
        if job.state is JobState.COMPLETED:
            return job.result
        if job.state is JobState.CANCELLED:
            raise JobCancelled(job)
        raise JobFailed(job)

    async def events(
        self,
        *,
        tenant_id: str | None = None,
        job_id: int | None = None,
        kinds: Iterable[str] = (),
        types: Iterable[EventType | str] = (),
        since: int | None = None,
        buffer: int = 1000,
    ) -> AsyncIterator[Event]:
        """Events as they happen, filtered: the durable ones in id order and the live
        ones (``job.started``, ``job.progress``) as they come. With ``since`` (an event's
        id), the events after it are read from the log first, with no gap and no
        duplicate. A reader that falls ``buffer`` events behind gets
        :class:`~conveyor.engine.events.StreamOverflow` with the id to resume from."""
        match = EventMatch(
            tenant_id=tenant_id,
            job_id=job_id,
            kinds=frozenset(kinds),
            types=frozenset(EventType(t) for t in types),
        )
        async with EventStream(
            self.follower, self.store, match, since=since, buffer=buffer
        ) as stream:
            async for event in stream:
                yield event

    # -- inspect -------------------------------------------------------------------------
    async def get(self, job_id: int, *, tenant_id: str | None = None) -> Job:
        """The job, or :class:`JobNotFound` (an id outside 1 .. 2**63-1 names none; with
        ``tenant_id``, so does another tenant's job)."""
        job = await self.store.get_job(job_id, tenant_id) if limits.is_valid_id(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first (of ``tenant_id`` only, when given); pass the last id seen as
        ``before_id`` for the next page."""
        limits.check_int(limit, "limit", 1, MAX_PAGE)
        if before_id is not None:
            limits.check_id(before_id, "before_id")
        try:
            parsed_state = JobState(state) if state is not None else None
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise InvalidJob(f"state {state!r} is not valid: use one of {names}") from None
        return await self.store.list_jobs(
            JobFilter(
                state=parsed_state,
                queue=limits.check_filter(queue, "queue"),
                kind=limits.check_filter(kind, "kind"),
                tenant_id=limits.check_filter(tenant_id, "tenant_id"),
                limit=limit,
                before_id=before_id,
            )
        )

    async def queues(self, *, tenant_id: str | None = None) -> builtins.list[QueueStats]:
        """Every queue's statistics; with ``tenant_id``, its jobs' figures are that
        tenant's jobs' only (pauses, limits and workers are every tenant's)."""
        return await self.store.queue_stats(tenant_id=tenant_id)

    async def workers(self) -> builtins.list[WorkerInfo]:
        return await self.store.list_workers()

    async def serving(self, job: Job) -> builtins.list[WorkerInfo]:
        """The live workers that would claim ``job``: they serve its queue and run its
        kind. Empty means it waits, queued, until such a worker starts."""
        return [w for w in await self.store.list_workers() if w.serves(job.queue, job.kind)]

    # -- operate -------------------------------------------------------------------------
    async def cancel(self, job_id: int, *, tenant_id: str | None = None) -> Job:
        """Cancel a queued job (it never starts) or stop a running one (its worker cancels
        the task promptly and records ``cancelled``); a cancelled job is returned as it
        is. A completed or failed job raises :class:`JobConflict` and is left alone. With
        ``tenant_id``, another tenant's job is :class:`JobNotFound`."""
        valid = limits.is_valid_id(job_id)
        job = await self.store.cancel(job_id, tenant_id) if valid else None
        if job is None:
            raise JobNotFound(job_id)
        check_can_cancel(job)
        return job

    async def retry(self, job_id: int, *, tenant_id: str | None = None) -> Job:
        """Queue a failed or cancelled job again now, granting one more attempt if it had
        used them all. A job in any other state raises :class:`JobConflict` and is left
        as it is. With ``tenant_id``, another tenant's job is :class:`JobNotFound`."""
        check_can_retry(await self.get(job_id, tenant_id=tenant_id))
        job = await self.store.retry(job_id, tenant_id)
        if job is None:
            raise JobNotFound(job_id)
        # Between the read and the retry another caller may have retried it already.
        if job.state is not JobState.QUEUED:
            check_can_retry(job)
        return job

    async def pause(self, queue: str) -> None:
        """Stop workers from claiming jobs of ``queue``; running jobs finish. Raises
        :class:`QueueNotFound` if the queue has no jobs, no setting and no live worker."""
        if not await self.store.set_paused(check_queue_name(queue), True):
            raise QueueNotFound(queue)

    async def resume(self, queue: str) -> None:
        """Let workers claim jobs of ``queue`` again (:class:`QueueNotFound` as for
        :meth:`pause`)."""
        if not await self.store.set_paused(check_queue_name(queue), False):
            raise QueueNotFound(queue)

    async def set_limit(self, queue: str, limit: int | None) -> None:
        """Let at most ``limit`` jobs of ``queue`` run at once across all workers (None:
        no cluster-wide limit; each worker's own limit still holds). Raises
        :class:`QueueNotFound` as :meth:`pause` does."""
        if limit is not None:
            limits.check_int(limit, "limit", 1, limits.MAX_CONCURRENCY)
        if not await self.store.set_queue_limit(check_queue_name(queue), limit):
            raise QueueNotFound(queue)

    async def set_tenant_limits(
        self,
        queue: str,
        tenant_id: str,
        *,
        concurrency: int | None = None,
        rate: str | None = None,
        weight: int | None = None,
    ) -> TenantLimits | None:
        """Set what ``tenant_id`` may do in ``queue``, replacing what was set (a limit
        left None is lifted; all None clears the tenant's row): at most ``concurrency``
        of its jobs of the queue run at once across all workers, the API admits at most
        ``rate`` of its submissions into the queue (``"100/minute"``, see
        :func:`~conveyor.engine.limits.check_rate`), and its share of the queue's claims
        is ``weight`` (1 .. 1000, default 1) against the other tenants'. The queue need
        not exist yet. Returns the limits now set, None once cleared."""
        queue = check_queue_name(queue)
        tenant_id = limits.check_tenant(tenant_id)
        if concurrency is not None:
            limits.check_int(concurrency, "concurrency", 1, limits.MAX_CONCURRENCY)
        if rate is not None:
            rate = limits.check_rate(rate)
        if weight is not None:
            limits.check_weight(weight)
        await self.store.set_tenant_limits(
            queue, tenant_id, concurrency=concurrency, rate=rate, weight=weight
        )
        if concurrency is None and rate is None and weight is None:
            return None
        return TenantLimits(queue, tenant_id, concurrency, rate, weight)

    async def tenant_limits(
        self, queue: str | None = None, *, tenant_id: str | None = None
    ) -> builtins.list[TenantLimits]:
        """The tenants' limits set in ``queue`` (None: in every queue), by queue and
        tenant; only ``tenant_id``'s when given."""
        if queue is not None:
            queue = check_queue_name(queue)
        if tenant_id is not None:
            tenant_id = limits.check_tenant(tenant_id)
        found = await self.store.list_tenant_limits(queue)
        return [t for t in found if tenant_id is None or t.tenant_id == tenant_id]

    async def prune(self, older_than_s: float) -> int:
        """Delete finished jobs that finished more than ``older_than_s`` seconds ago."""
        seconds = limits.finite_seconds(older_than_s)
        if seconds is None or seconds < 0:
            raise limits.LimitError(
                f"older_than_s {limits.excerpt(older_than_s)} is not valid: use seconds >= 0",
                ("older_than_s",),
            )
        total = 0
        while (n := await self.store.prune(seconds)) > 0:
            total += n
        return total
