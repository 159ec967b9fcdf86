"""The store contract: every database operation the engine needs, named for what happens
to a job.

This interface is internal (it may change between releases); users talk to
:class:`conveyor.Client` and :class:`conveyor.Worker`. Each method is one transaction.
Every transition of a running job is guarded on the state, attempt and owner it expects,
so a late report from a worker that lost its lease never overwrites a newer state.

The store owns the clock: times written to the database come from the store (the
database server's for PostgreSQL), never from the caller, so workers on machines with
skewed clocks agree on when a job is due or a lease has expired.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from conveyor.store.accounts import AccountStore
from conveyor.store.email_preferences import EmailPreferenceStore
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
from conveyor.store.webhooks import WebhookStore


@dataclass(frozen=True, slots=True)
class JobsAvailable:
    """Jobs may be claimable in these queues (None: in any queue)."""

    queues: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Cancellation was requested for these running jobs."""

    job_ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class JobHandedOff:
    """An enqueue handed a job to the worker ``worker_id``, which had offered a free slot:
    the job is already running under it (attempt ``attempt``). ``job`` is None when the
    job was too large for a notice; read it by id then."""

    worker_id: str
    job_id: int
    attempt: int
    job: Job | None


@dataclass(frozen=True, slots=True)
class NoticesLost:
    """Notices may have been lost (the LISTEN connection dropped and is back): a handoff
    among them leaves a job running under a worker that never heard of it."""


@dataclass(frozen=True, slots=True)
class EventsAppended:
    """Durable events may have been committed to the event log (by this process or
    another): read it after the last id read."""


@dataclass(frozen=True, slots=True)
class LiveEvents:
    """Live events (``job.started``, ``job.progress``: never stored), published by some
    process's :meth:`EventLog.publish_live`."""

    events: tuple[Event, ...]


Notice = JobsAvailable | CancelRequested | JobHandedOff | NoticesLost | EventsAppended | LiveEvents
Listener = Callable[[Notice], None]


class StoreError(Exception):
    """The database could not be reached or refused an operation."""


class ConflictError(StoreError):
    """The change would break a uniqueness rule (e.g. two active jobs with one unique_key)."""


class TransactionRolledBack(StoreError):
    """The database rolled the call back to break a deadlock or a serialization conflict
    with another transaction (PostgreSQL SQLSTATE class 40: ``40P01``, ``40001``).
    Nothing of the call was recorded and the connection is fine; unlike an outage, running
    the call again at once is the remedy (the worker does so for its exchange)."""


class DataRejected(StoreError):
    """The database refused the data of a call, or the data could not be encoded for it
    (PostgreSQL: a value it cannot hold, such as a NUL character in JSON; SQLite: text
    that is not UTF-8, an integer past 64 bits; either: a payload that is not JSON).
    Nothing of the call was recorded; the connection is fine, and the same data will be
    refused again. :meth:`JobQueue.settle_and_claim` raises it so the worker can record
    the batch's reports apart and fail the ones refused; an enqueue or a request raises
    it for a job or input that cannot be stored."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store can do beyond the contract every store keeps, declared by the store
    so that no caller infers it from the dialect's name."""

    handoff: bool
    """An enqueue can hand a job straight to a worker that offered a free slot
    (:class:`JobHandedOff`): the store is a :class:`HandoffQueue`. Without it, workers
    claim every job."""
    listen: bool
    """Other processes' changes arrive as notices without polling (``LISTEN/NOTIFY``);
    without it, a store polls for them."""


@dataclass(frozen=True, slots=True)
class Offers:
    """How an exchange of a :class:`HandoffQueue` changes the worker's offers of free
    slots: its claim offers the slots it leaves free in the claimed queues (an enqueue
    may then insert a job of such a queue already running under the worker and hand it
    over in a :class:`JobHandedOff` notice)."""

    freed: Mapping[str, int] = field(default_factory=dict)
    """Slots the worker's jobs freed, added to its offers in queues it is not claiming."""
    withdraw: bool = False
    """Take every offer of the worker back."""


class JobQueue(Protocol):
    """The job queue: what the engine (client, worker, scheduler) asks of a store.
    Implementations: ``conveyor.store.sqlite.SqliteStore``,
    ``conveyor.store.postgres.PostgresStore``."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"``: for messages and logs; what a store can do is
    in :attr:`capabilities`."""

    capabilities: Capabilities

    url: str

    async def open(self) -> None:
        """Connect. Raises :class:`StoreError` with the URL at fault if that fails."""

    async def close(self) -> None:
        """Disconnect; safe to call twice."""

    # -- schema ----------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied (empty if current).
        Raises :class:`StoreError` for a database that a newer Conveyor migrated."""

    async def schema_status(self) -> tuple[int, int]:
        """(applied version, latest version known to this code)."""

    # -- producing -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Insert jobs in one transaction; results in input order. A job whose
        ``unique_key`` matches a queued or running job of its tenant (or an earlier job of
        the same call) resolves to that job instead. Raises :class:`DataRejected` for a
        job the database cannot hold; nothing is inserted then."""

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
        """Record finished attempts and progress, then claim jobs, and with ``rescue`` do
        what :meth:`rescue` does too; as few round trips as the database allows.

        Claims take queued, due jobs of unpaused queues whose kind is one of
        ``claim.kinds``, strictly by priority (1 first), then ``run_at``, then id, across
        those kinds; each claimed job becomes ``running`` with its attempt incremented,
        ``locked_by`` the worker and a lease of ``claim.lease_s``. Jobs of other kinds are
        left queued, and cost the claim nothing however many there are.

        Raises :class:`DataRejected` when the database refuses the data of an outcome or
        a progress report; nothing of the call is recorded then, and nothing is claimed.
        """

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        """Report which of ``jobs`` (id -> attempt) still run under ``worker_id`` and
        which have a cancel request; with ``renew`` extend their leases and the worker's
        ``last_seen_at``, and record its ``memory_mb`` (kept as it was when None)."""

    async def adopt(self, worker_id: str, known: Collection[int]) -> list[Job]:
        """Jobs running under ``worker_id`` other than ``known``: handed to it in a notice
        it never received, or claimed by a call whose answer it never got."""

    async def rescue(self, limit: int = 1000) -> RescueResult:
        """Return running jobs whose lease has expired to the queue (attempt counted,
        an error entry appended), or fail them if no attempt is left, or cancel them if a
        cancel was requested. Also forgets workers whose registration expired."""

    async def prune(self, older_than_s: float, limit: int = 1000) -> int:
        """Delete finished jobs that finished more than ``older_than_s`` ago."""

    # -- operating -------------------------------------------------------------------
    async def get_job(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        """The job; with ``tenant_id``, only if it is that tenant's (another tenant's job
        is None, as no job is). None: any tenant's (operators, the CLI, workers)."""

    async def list_jobs(self, flt: JobFilter) -> list[Job]:
        """Jobs newest first; ``flt.tenant_id`` None lists every tenant's."""

    async def cancel(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        """Cancel a queued job at once; ask the worker of a running job to stop it.
        Returns the job after the change, or None if there is no such job (of
        ``tenant_id``, when given: see :meth:`get_job`). Finished jobs are returned
        unchanged."""

    async def retry(self, job_id: int, tenant_id: str | None = None) -> Job | None:
        """Queue a failed or cancelled job again, due now, with one more attempt if it had
        none left. Other states are returned unchanged; None as for :meth:`cancel`."""

    async def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause or resume ``queue``; False, and nothing written, if no such queue
        exists: one with a setting, any job or a live worker serving it."""

    async def set_queue_limit(self, queue: str, limit: int | None) -> bool:
        """Cap how many jobs of ``queue`` run at once across all workers (None: no cap).
        Claims enforce it, serialised per limited queue so two workers cannot both take
        the last slot. False, and nothing written, if no such queue exists (as for
        :meth:`set_paused`)."""

    async def set_tenant_limits(
        self,
        queue: str,
        tenant_id: str,
        *,
        concurrency: int | None,
        rate: str | None,
        weight: int | None,
    ) -> None:
        """Set what ``tenant_id`` may do in ``queue`` (:class:`TenantLimits`), replacing
        what was set; all three None clears them. A concurrency cap holds across all
        workers from the next claim on (claims of the queue serialise as for a queue
        limit); a weight changes the tenant's share of the claims."""

    async def list_tenant_limits(self, queue: str | None = None) -> list[TenantLimits]:
        """The tenants' limits set in ``queue`` (None: in every queue), by queue and
        tenant."""

    async def enqueue_periodic(self, job: NewJob, tick: float) -> Enqueued | None:
        """Enqueue ``job`` for periodic tick ``tick`` of its kind, once cluster-wide:
        returns None if some worker already enqueued that tick."""

    async def queue_stats(
        self, finished: bool = True, tenant_id: str | None = None
    ) -> list[QueueStats]:
        """Statistics for every queue that has active or recently finished jobs, a live
        worker or a setting. Each read costs in proportion to the active jobs and the
        jobs finished lately, never to all the finished jobs kept. ``finished=False``
        leaves out the counts of finished jobs (the largest part of that cost), for
        readers that need only the active side and its recent run times. With
        ``tenant_id`` the job counts, due and recent figures and run times are that
        tenant's jobs' only; pauses, limits and workers are every tenant's (None: every
        tenant's jobs)."""

    async def register_worker(self, info: WorkerInfo, lease_s: float) -> None:
        """Record a live worker; :meth:`heartbeat` with ``renew`` keeps it alive."""

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers, with the queues and kinds each serves."""

    # -- notices ---------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) when jobs may be available or a cancel is
        requested, from this process or another. Returns a function that removes it."""


class HandoffQueue(JobQueue, Protocol):
    """A job queue that can hand jobs off (``capabilities.handoff``): its exchange also
    keeps the worker's offers of free slots (see :class:`Offers`)."""

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
        """:meth:`JobQueue.settle_and_claim`; with ``offers``, the claim offers the slots
        it leaves free and the worker's other offers change as ``offers`` says.
        :attr:`SettleResult.offered` names the claimed queues now offered in."""


def handoff_queue(store: JobQueue) -> HandoffQueue | None:
    """``store`` as a :class:`HandoffQueue` if it declares it can hand off, else None. A
    store that declares ``capabilities.handoff`` implements :class:`HandoffQueue`."""
    return cast(HandoffQueue, store) if store.capabilities.handoff else None


class EventLog(Protocol):
    """The event log: an outbox of what happened to jobs, written by the store in the
    transaction of each change when the store was made with ``events=True`` (the
    default): ``job.queued`` by every enqueue (requests, periodic ticks, retries of failed
    or cancelled jobs), ``job.retrying`` / ``job.completed`` / ``job.failed`` /
    ``job.cancelled`` by the exchange's outcomes, the rescuer and cancel. A released job
    (a worker's shutdown) writes none. Nothing is announced that was rolled back.

    Every listener (:meth:`JobQueue.add_listener`) of every store on the database hears
    :class:`EventsAppended` soon after a commit that wrote events: from this process at
    once; from others by ``NOTIFY`` (PostgreSQL) or by the poll of the file (SQLite).
    A process that dies between its commit and its notice leaves the events to be found
    by the next reader (readers also read at ``event_poll_interval``)."""

    async def read_events(self, flt: EventFilter) -> EventPage:
        """Committed events matching ``flt``, in id order, at most ``flt.limit``, each with
        its ``request_id`` (None for a job without a request)."""

    async def last_event_id(self) -> int:
        """The highest event id committed (0 when there is none): where a new reader that
        wants only what comes next starts."""

    async def prune_events(self, older_than_s: float, limit: int = 10_000) -> int:
        """Delete events written more than ``older_than_s`` ago; how many."""

    async def publish_live(self, events: Sequence[Event]) -> None:
        """Tell every listening store of these live events (:class:`LiveEvents`); never
        stored, so lost for a store not listening then. This process's listeners hear them
        at once; PostgreSQL sends them to other processes by ``NOTIFY`` (batched, payloads
        within its 8000-byte limit); SQLite does not send them to other processes."""

    async def event_cursor(self, name: str) -> int | None:
        """Where the consumer ``name`` of the whole log has got to (None: never ran)."""

    async def advance_event_cursor(
        self, name: str, expected: int | None, to: int, jobs: Sequence[NewJob]
    ) -> bool:
        """In one transaction: move ``name``'s cursor from ``expected`` (None: it does
        not exist yet) to ``to`` and enqueue ``jobs`` (the deliveries of the events
        passed). False, and nothing written, if the cursor was not at ``expected``
        (another process's consumer moved it first)."""


class RequestStore(Protocol):
    """The application's request resource: what a user asked for, created with its job.
    Each method is one transaction."""

    async def create_request(self, new: NewRequest) -> StoredRequest:
        """Create a request and its job in one transaction, and read the job's queue
        position with them (as :meth:`queue_position` counts it). With an idempotency
        key that this tenant used before, whichever caller sent it, return that request
        (``created`` False) and create nothing, not even a job, even when two such calls
        race. Raises
        :class:`DataRejected` for input or a payload the database cannot hold
        (PostgreSQL: a ``\\u0000`` in a JSON string)."""

    async def get_request(self, request_id: int, tenant_id: str) -> Request | None:
        """The tenant's request; another tenant's is None, as no request is."""

    async def list_requests(self, flt: RequestFilter) -> list[Request]:
        """``flt.tenant_id``'s requests, newest first."""

    async def queue_position(self, job: Job) -> int:
        """How many queued, due jobs of the job's queue and tenant will be claimed before
        it (claims take tenants in turn; other tenants' work is not disclosed)."""


class Store(
    JobQueue, RequestStore, AccountStore, EventLog, EmailPreferenceStore, WebhookStore, Protocol
):
    """A store that serves every seam: the job queue, the requests, the accounts, the
    event log, the email preferences and the webhooks (every store here does). Callers
    that need one only take :class:`JobQueue`, :class:`RequestStore`,
    :class:`~conveyor.store.accounts.AccountStore`, :class:`EventLog`,
    :class:`~conveyor.store.email_preferences.EmailPreferenceStore` or
    :class:`~conveyor.store.webhooks.WebhookStore`."""
