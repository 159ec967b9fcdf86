"""The embedded store: one SQLite file in WAL mode, safe for several processes.

Each verb is one transaction on the connection's thread (:mod:`.connection`), written
in the module of its topic; this class runs it and tells the listeners what changed.

Other processes' commits are noticed through ``PRAGMA data_version``, a counter SQLite
keeps in shared memory, polled every ``sqlite_poll_interval``: cheap enough that an idle
worker costs nothing measurable, and no query touches the jobs table until it changes.

The event log (:class:`~conveyor.store.base.EventLog`, :mod:`.events`) is written in the
transaction of each change; this process's listeners hear :class:`EventsAppended` once
it commits, other processes' through the same poll. Live events reach this process's
listeners only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Collection, Sequence

from conveyor.store.base import (
    CancelRequested,
    Capabilities,
    EventsAppended,
    JobsAvailable,
    Listener,
    LiveEvents,
    StoreError,
)
from conveyor.store.fairness import Turns
from conveyor.store.fanout import Fanout
from conveyor.store.records import (
    ClaimRequest,
    Enqueued,
    Event,
    EventFilter,
    EventPage,
    Job,
    JobFilter,
    JobState,
    LeaseStatus,
    NewJob,
    NewRequest,
    Outcome,
    Progress,
    QueueStats,
    Request,
    RequestFilter,
    RescueResult,
    SettleResult,
    StoredRequest,
    TenantLimits,
    WorkerInfo,
)
from conveyor.store.sqlite import events, exchange, migrations, operating, requests
from conveyor.store.sqlite.accounts import SqliteAccounts
from conveyor.store.sqlite.connection import Database
from conveyor.store.sqlite.email_preferences import SqliteEmailPreferences
from conveyor.store.sqlite.enqueue import insert_jobs, insert_periodic
from conveyor.store.sqlite.webhooks import SqliteWebhooks
from conveyor.store.ticks import TickTaken
from conveyor.store.urls import redact


class SqliteStore(SqliteAccounts, SqliteEmailPreferences, SqliteWebhooks):
    """A :class:`conveyor.store.base.Store` on one SQLite file; the accounts' verbs are
    :class:`~conveyor.store.sqlite.accounts.SqliteAccounts`', the email preferences'
    :class:`~conveyor.store.sqlite.email_preferences.SqliteEmailPreferences`'.

    No handoff: a worker in this process is woken at once, and others poll. Made with
    ``events=False``, the store writes no event (and never announces one)."""

    dialect = "sqlite"
    capabilities = Capabilities(handoff=False, listen=False)

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        poll_interval: float = 0.05,
        events: bool = True,
    ) -> None:
        self.url = url
        self._events = events
        self._db = Database(url, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        self.path = self._db.path
        self._poll_interval = poll_interval
        self._fanout = Fanout()
        self._turns = Turns()
        self._poller: asyncio.Task[None] | None = None

    # -- connection ------------------------------------------------------------------
    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._db.close()

    # -- schema ----------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        return await migrations.migrate(self._db)

    async def schema_status(self) -> tuple[int, int]:
        return await migrations.schema_status(self._db)

    # -- producing -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        if not jobs:
            return []
        log = self._events
        result = await self._db.write(lambda conn, now: insert_jobs(conn, now, jobs, log=log))
        self._fanout.publish(JobsAvailable(frozenset(job.queue for job in jobs)))
        self._appended(log and any(e.created for e in result))
        return result

    async def enqueue_periodic(self, job: NewJob, tick: float) -> Enqueued | None:
        try:
            result = await self._db.write(
                lambda conn, now: insert_periodic(conn, now, job, tick, log=self._events)
            )
        except TickTaken:
            return None
        self._fanout.publish(JobsAvailable(frozenset({job.queue})))
        self._appended(self._events)
        return result

    # -- working ---------------------------------------------------------------------
    async def settle_and_claim(
        self,
        outcomes: Sequence[Outcome],
        progress: Sequence[Progress],
        worker_id: str,
        claim: ClaimRequest | None,
        *,
        rescue: bool = False,
    ) -> SettleResult:
        result, wake, logged = await self._db.write(
            lambda conn, now: exchange.settle_and_claim(
                conn, now, outcomes, progress, worker_id, claim, rescue, self._turns, self._events
            )
        )
        if wake:
            self._fanout.publish(JobsAvailable(wake))
        self._appended(logged)
        return result

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        def check(conn: sqlite3.Connection, now: float) -> LeaseStatus:
            return exchange.leases(conn, now, worker_id, jobs, lease_s, renew, memory_mb)

        return await (self._db.write(check) if renew else self._db.read(check))

    async def adopt(self, worker_id: str, known: Collection[int]) -> list[Job]:
        return await self._db.read(
            lambda conn, now: exchange.unknown_jobs(conn, now, worker_id, known)
        )

    async def rescue(self, limit: int = 1000) -> RescueResult:
        def tx(conn: sqlite3.Connection, now: float) -> tuple[RescueResult, frozenset[str]]:
            result, requeued_in, entries = exchange.rescue_expired(conn, now, limit)
            if self._events:
                events.record(conn, now, entries)
            return result, requeued_in

        result, requeued_in = await self._db.write(tx)
        if requeued_in:
            self._fanout.publish(JobsAvailable(requeued_in))
        self._appended(self._events and result.total > 0)
        return result

    async def prune(self, older_than_s: float, limit: int = 1000) -> int:
        return await self._db.write(
            lambda conn, now: operating.prune(conn, now, older_than_s, limit)
        )

    # -- requests --------------------------------------------------------------------
    async def create_request(self, new: NewRequest) -> StoredRequest:
        log = self._events
        stored = await self._db.write(lambda conn, now: requests.create(conn, now, new, log=log))
        if stored.created:
            self._fanout.publish(JobsAvailable(frozenset({new.job.queue})))
            self._appended(log)
        return stored

    async def get_request(self, request_id: int, tenant_id: str) -> Request | None:
        return await self._db.read(lambda conn, now: requests.get(conn, request_id, tenant_id))

    async def list_requests(self, flt: RequestFilter) -> list[Request]:
        return await self._db.read(lambda conn, now: requests.list_requests(conn, flt))

    async def queue_position(self, job: Job) -> int:
        return await self._db.read(lambda conn, now: requests.jobs_ahead(conn, now, job))

    # -- operating -------------------------------------------------------------------
    async def get_job(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        return await self._db.read(lambda conn, now: operating.get_job(conn, job_id, tenant_id))

    async def list_jobs(self, flt: JobFilter) -> list[Job]:
        return await self._db.read(lambda conn, now: operating.list_jobs(conn, flt))

    async def cancel(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        state, job = await self._db.write(
            lambda conn, now: operating.cancel(conn, now, job_id, tenant_id, log=self._events)
        )
        if state == JobState.RUNNING:
            self._fanout.publish(CancelRequested(frozenset({job_id})))
        self._appended(self._events and state == JobState.CANCELLED)
        return job

    async def retry(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        queue, job = await self._db.write(
            lambda conn, now: operating.retry(conn, now, job_id, tenant_id, log=self._events)
        )
        if queue is not None:
            self._fanout.publish(JobsAvailable(frozenset({queue})))
            self._appended(self._events)
        return job

    async def set_paused(self, queue: str, paused: bool) -> bool:
        done = await self._db.write(
            lambda conn, now: operating.set_paused(conn, now, queue, paused)
        )
        if done and not paused:
            self._fanout.publish(JobsAvailable(frozenset({queue})))
        return done

    async def set_queue_limit(self, queue: str, limit: int | None) -> bool:
        done = await self._db.write(lambda conn, now: operating.set_limit(conn, now, queue, limit))
        if done:
            self._fanout.publish(JobsAvailable(frozenset({queue})))
        return done

    async def queue_stats(
        self, finished: bool = True, tenant_id: str | None = None
    ) -> list[QueueStats]:
        return await self._db.read(
            lambda conn, now: operating.queue_stats(conn, now, finished, tenant_id)
        )

    async def set_tenant_limits(
        self,
        queue: str,
        tenant_id: str,
        *,
        concurrency: int | None,
        rate: str | None,
        weight: int | None,
    ) -> None:
        limits = TenantLimits(queue, tenant_id, concurrency, rate, weight)
        await self._db.write(lambda conn, now: operating.set_tenant_limits(conn, now, limits))
        self._fanout.publish(JobsAvailable(frozenset({queue})))

    async def list_tenant_limits(self, queue: str | None = None) -> list[TenantLimits]:
        return await self._db.read(lambda conn, now: operating.list_tenant_limits(conn, queue))

    async def register_worker(self, info: WorkerInfo, lease_s: float) -> None:
        await self._db.write(lambda conn, now: operating.register_worker(conn, now, info, lease_s))

    async def unregister_worker(self, worker_id: str) -> None:
        await self._db.write(lambda conn, now: operating.unregister_worker(conn, worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._db.read(operating.live_workers)

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, flt: EventFilter) -> EventPage:
        return await self._db.read(lambda conn, now: events.read(conn, flt))

    async def last_event_id(self) -> int:
        return await self._db.read(lambda conn, now: events.last_id(conn))

    async def prune_events(self, older_than_s: float, limit: int = 10_000) -> int:
        return await self._db.write(lambda conn, now: events.prune(conn, now, older_than_s, limit))

    async def publish_live(self, events: Sequence[Event]) -> None:
        # In-process only: another process on the file would need a table to hear them
        # from, and live events are never stored.
        if events:
            self._fanout.publish(LiveEvents(tuple(events)))

    async def event_cursor(self, name: str) -> int | None:
        return await self._db.read(lambda conn, now: events.cursor(conn, name))

    async def advance_event_cursor(
        self, name: str, expected: int | None, to: int, jobs: Sequence[NewJob]
    ) -> bool:
        log = self._events

        def tx(conn: sqlite3.Connection, now: float) -> bool:
            if not events.move_cursor(conn, now, name, expected, to):
                return False
            insert_jobs(conn, now, jobs, log=log)
            return True

        moved = await self._db.write(tx)
        if moved and jobs:
            self._fanout.publish(JobsAvailable(frozenset(job.queue for job in jobs)))
            self._appended(log)
        return moved

    def _appended(self, wrote: bool) -> None:
        """Tell this process's listeners that events were committed, if ``wrote``."""
        if wrote:
            self._fanout.publish(EventsAppended())

    # -- notices ---------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        if self._poller is None:
            if not self._db.is_open:
                raise StoreError(f"store {redact(self.url)!r} is not open")
            # The baseline is read before this returns (a PRAGMA read on the store's own
            # thread): a commit made after add_listener() must be heard, and one made
            # between it and the watcher's first look would not be otherwise.
            baseline = self._db.run_now(self._db.data_version)
            self._poller = asyncio.get_running_loop().create_task(
                self._watch_other_processes(baseline), name="conveyor-sqlite-watch"
            )
        return self._fanout.add(listener)

    async def _watch_other_processes(self, last: int) -> None:
        """Publish notices whenever another connection commits to the file: jobs may be
        available, and events may have been appended (readers read after their last id,
        which costs one look-up of the primary key when nothing new came)."""
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                current = await self._db.call(self._db.data_version)
            except StoreError:
                continue
            if current != last:
                last = current
                self._fanout.publish(JobsAvailable(None))
                self._fanout.publish(EventsAppended())
