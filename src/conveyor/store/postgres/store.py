"""The production store: PostgreSQL 15+ through asyncpg, shared by any number of worker
and API processes on any number of machines.

- Claims take ``FOR UPDATE SKIP LOCKED`` off a partial index holding only queued jobs;
  an idle poll (claim, rescue, forget dead workers, next due time) is one statement.
- Outcomes of one exchange are one ``UPDATE … FROM unnest(…)`` statement.
- Enqueues are one ``INSERT … SELECT FROM unnest(…)`` whatever their number, with one
  ``NOTIFY`` per queue (PostgreSQL folds equal notifications of a transaction into one).
- Workers are woken by ``LISTEN`` on a dedicated connection, re-established when it
  drops; with ``listen=False`` (PgBouncer in transaction mode, where LISTEN does not work)
  they rely on the safety poll alone.
- Cluster-wide queue limits: claims on a limited queue first lock its row in
  ``conveyor_queues``, so the running count the claim reads cannot be stale.
- Handoff: a claim that comes back short offers the slots it left free
  (``conveyor_offers``); a single enqueue that finds a live offer inserts its job running
  under that worker and hands it over in its NOTIFY, so the job starts after one durable
  commit instead of two. An offer is live while the LISTEN connection that will carry
  the notice holds an advisory lock on the offer's key.
- Events (``events=True``, the default): each change writes its events in its own
  statement (a data-modifying CTE). The enqueue's statements NOTIFY ``e`` with their
  other notices; the exchange never NOTIFYs in its transaction (a notifying commit holds
  a cluster-wide lock through its WAL flush), so after an exchange, rescue, cancel or
  retry that wrote events the store sends ``e`` itself, coalesced (``announcer``). Live
  events go the same way as ``v:`` notices.
- Tenants: every tenant-owned statement names its tenant in its ``WHERE``. A store opened
  for the API (``role``, ``CONVEYOR_DATABASE_ROLE``) also runs each call for a tenant as
  the role ``conveyor_api`` in a transaction that sets the tenant first, so the row
  security policies of migration 0009 hold it to that tenant's rows (docs/operations.md).

The parts, one module each: ``connection`` (pool and lane), ``listener`` (notices),
``announcer`` (notices of events sent after the commit), ``enqueue``, ``exchange`` (the
worker's statements), ``requests``, ``jobs``, ``events`` (reading the log, its cursors),
``queues``, ``workers``, ``accounts``, ``email_preferences``, ``migrations``, and ``rows``
(decoding); their SQL is in a ``.sql`` file of the same topic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence

from conveyor.store.base import Capabilities, Listener, Offers, StoreError
from conveyor.store.coalesce import Coalescer
from conveyor.store.fanout import Fanout
from conveyor.store.postgres import migrations
from conveyor.store.postgres.accounts import PostgresAccounts
from conveyor.store.postgres.announcer import Announcer
from conveyor.store.postgres.connection import Database, RoleSetting
from conveyor.store.postgres.email_preferences import PostgresEmailPreferences
from conveyor.store.postgres.enqueue import Enqueuer
from conveyor.store.postgres.events import Events
from conveyor.store.postgres.exchange import Exchange, Limits
from conveyor.store.postgres.jobs import Jobs
from conveyor.store.postgres.listener import NoticeListener
from conveyor.store.postgres.queues import Queues
from conveyor.store.postgres.requests import Requests
from conveyor.store.postgres.tenant_limits import TenantLimitsStore
from conveyor.store.postgres.webhooks import PostgresWebhooks
from conveyor.store.postgres.workers import Workers
from conveyor.store.records import (
    ClaimRequest,
    Enqueued,
    Event,
    EventFilter,
    EventPage,
    Job,
    JobFilter,
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


class PostgresStore(PostgresAccounts, PostgresEmailPreferences, PostgresWebhooks):
    """A :class:`conveyor.store.base.Store` on PostgreSQL; the accounts' verbs are
    :class:`~conveyor.store.postgres.accounts.PostgresAccounts`', the email preferences'
    :class:`~conveyor.store.postgres.email_preferences.PostgresEmailPreferences`'."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        listen: bool = True,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        role: RoleSetting = "none",
        events: bool = True,
    ) -> None:
        """``role``: what the calls made for a tenant act as: ``none`` (the login role:
        workers, the CLI), ``auto`` (``conveyor_api`` when it exists and the login role
        may act as it: the API) or a role's name (which must be usable). ``events``:
        write the event log (``CONVEYOR_EVENTS``); without it no change writes an event
        and none is announced (the log can still be read)."""
        self.url = url
        self.listen = listen
        self.events = events
        # Handoff rides on the LISTEN connection: its notice carries the job.
        self.capabilities = Capabilities(handoff=listen, listen=listen)
        self._fanout = Fanout()
        self._db = Database(
            url,
            session_settings=listen,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            role=role,
        )
        self._limits = Limits()
        self._listener = NoticeListener(self._db, self._fanout.publish, self._reload_limits_soon)
        self._announcer = Announcer(self._db, self._fanout.publish)
        announce = self._announcer.events_appended if events else None
        self._enqueuer = Enqueuer(self._db, self._fanout.publish, events=events)
        self._exchange = Exchange(
            self._db,
            self._fanout.publish,
            self._limits,
            lambda: self._listener.offer_key,
            hears_limits=listen,
            announce=announce,
        )
        self._requests = Requests(self._db, self._fanout.publish, events=events)
        self._jobs = Jobs(self._db, self._fanout.publish, announce)
        self._events = Events(self._db, self._fanout.publish, events=events)
        self._queues = Queues(self._db, self._fanout.publish, self._limits)
        self._tenant_limits = TenantLimitsStore(self._db, self._fanout.publish, self._limits)
        self._workers = Workers(self._db)
        self._key_lookups = Coalescer(self._find_api_keys)

    # -- connection ----------------------------------------------------------------
    async def open(self) -> None:
        await self._db.open()
        await self._db.resolve_role()

    @property
    def role(self) -> str | None:
        """The role tenant-scoped calls act as; None: the login role."""
        return self._db.role

    async def close(self) -> None:
        await self._requests.close()
        await self._key_lookups.close()
        await self._announcer.close()
        await self._listener.stop()
        await self._db.close()

    # -- schema --------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        applied = await migrations.migrate(self._db, self._limits)
        # Migration 0009 may just have created the API's role.
        await self._db.resolve_role()
        return applied

    async def schema_status(self) -> tuple[int, int]:
        return await migrations.schema_status(self._db)

    # -- producing -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        return await self._enqueuer.enqueue(jobs)

    async def enqueue_periodic(self, job: NewJob, tick: float) -> Enqueued | None:
        return await self._enqueuer.enqueue_periodic(job, tick)

    # -- working ---------------------------------------------------------------------
    async def settle_and_claim(
        self,
        outcomes: Sequence[Outcome],
        progress: Sequence[Progress],
        worker_id: str,
        claim: ClaimRequest | None,
        *,
        rescue: bool = False,
        offers: Offers | None = None,
    ) -> SettleResult:
        return await self._exchange.settle_and_claim(
            outcomes, progress, worker_id, claim, 1000 if rescue else 0, offers
        )

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        return await self._exchange.heartbeat(worker_id, jobs, lease_s, renew, memory_mb)

    async def adopt(self, worker_id: str, known: Collection[int]) -> list[Job]:
        return await self._exchange.adopt(worker_id, known)

    async def rescue(self, limit: int = 1000) -> RescueResult:
        return await self._exchange.rescue(limit)

    async def prune(self, older_than_s: float, limit: int = 1000) -> int:
        return await self._jobs.prune(older_than_s, limit)

    # -- requests --------------------------------------------------------------------
    async def create_request(self, new: NewRequest) -> StoredRequest:
        return await self._requests.create(new)

    async def get_request(self, request_id: int, tenant_id: str) -> Request | None:
        return await self._requests.get(request_id, tenant_id)

    async def list_requests(self, flt: RequestFilter) -> list[Request]:
        return await self._requests.list(flt)

    async def queue_position(self, job: Job) -> int:
        return await self._requests.queue_position(job)

    # -- operating -------------------------------------------------------------------
    async def get_job(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        return await self._jobs.get(job_id, tenant_id)

    async def list_jobs(self, flt: JobFilter) -> list[Job]:
        return await self._jobs.list(flt)

    async def cancel(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        return await self._jobs.cancel(job_id, tenant_id)

    async def retry(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        return await self._jobs.retry(job_id, tenant_id)

    async def set_paused(self, queue: str, paused: bool) -> bool:
        return await self._queues.set_paused(queue, paused)

    async def set_queue_limit(self, queue: str, limit: int | None) -> bool:
        return await self._queues.set_limit(queue, limit)

    async def queue_stats(
        self, finished: bool = True, tenant_id: str | None = None
    ) -> list[QueueStats]:
        return await self._queues.stats(finished, tenant_id)

    async def set_tenant_limits(
        self,
        queue: str,
        tenant_id: str,
        *,
        concurrency: int | None,
        rate: str | None,
        weight: int | None,
    ) -> None:
        await self._tenant_limits.set(queue, tenant_id, concurrency, rate, weight)

    async def list_tenant_limits(self, queue: str | None = None) -> list[TenantLimits]:
        return await self._tenant_limits.list(queue)

    async def register_worker(self, info: WorkerInfo, lease_s: float) -> None:
        await self._workers.register(info, lease_s)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._workers.unregister(worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._workers.list()

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, flt: EventFilter) -> EventPage:
        return await self._events.read(flt)

    async def last_event_id(self) -> int:
        return await self._events.last_id()

    async def prune_events(self, older_than_s: float, limit: int = 10_000) -> int:
        return await self._events.prune(older_than_s, limit)

    async def publish_live(self, events: Sequence[Event]) -> None:
        self._announcer.live(events)

    async def event_cursor(self, name: str) -> int | None:
        return await self._events.cursor(name)

    async def advance_event_cursor(
        self, name: str, expected: int | None, to: int, jobs: Sequence[NewJob]
    ) -> bool:
        return await self._events.advance_cursor(name, expected, to, jobs)

    # -- notices ---------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        remove = self._fanout.add(listener)
        if self.listen:
            self._listener.start()
        return remove

    def _reload_limits_soon(self) -> None:
        async def reload() -> None:
            with contextlib.suppress(StoreError):
                await self._db.run(self._limits.load)

        asyncio.get_running_loop().create_task(reload())
