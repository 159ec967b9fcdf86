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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from conveyor.logs import get_logger
from conveyor.store.base import (
    CancelRequested,
    Capabilities,
    ConflictError,
    DataRejected,
    JobHandedOff,
    JobsAvailable,
    Listener,
    Notice,
    NoticesLost,
    Offers,
    StoreError,
)
from conveyor.store.coalesce import Coalescer
from conveyor.store.records import (
    JOB_COLUMNS,
    ClaimRequest,
    Enqueued,
    ErrorEntry,
    Job,
    JobFilter,
    JobState,
    LeaseStatus,
    NewJob,
    NewRequest,
    Outcome,
    OutcomeKind,
    Progress,
    QueueStats,
    Request,
    RequestFilter,
    RescueResult,
    SettleResult,
    StoredRequest,
    WorkerInfo,
)
from conveyor.store.sqlfile import load_migrations, load_queries
from conveyor.store.stats import FINISHED_WINDOW_S, assemble_queue_stats
from conveyor.store.urls import redact as _safe

T = TypeVar("T")
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Row: TypeAlias = "asyncpg.Record | Sequence[Any]"

_Q = load_queries(__name__)
CHANNEL = "conveyor_v1"
"""The NOTIFY channel; versioned so that old and new releases can run side by side."""

# Any constant shared by every Conveyor process: the migration lock's key.
_MIGRATION_LOCK = 0x636F6E76  # "conv"

_ENDING = frozenset({OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.CANCELLED})

log = get_logger("store.postgres")

_SESSION_SETTINGS = {
    # Re-planning the exchange statement at every call cost 1-2 ms: PostgreSQL kept
    # choosing custom plans for it.
    "plan_cache_mode": "force_generic_plan",
    # The claim's LIMIT is a parameter, so the planner prices the exchange statement as if
    # it took a tenth of the claim index; past ~60,000 rows that crosses jit_above_cost and
    # every call spent ~160 ms compiling (throughput fell from ~10,000 to ~1,200 jobs/s).
    "jit": "off",
}
"""Set when each connection starts. Behind PgBouncer (listen=False) start-up parameters it
does not know are refused, so there they are left out: set them on the role instead
(ALTER ROLE ... SET jit = off)."""


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def record_to_job(row: Row, offset: int = 0) -> Job:
    """Decode a ``conveyor_jobs`` row whose columns start at ``offset``."""
    r = row[offset : offset + len(JOB_COLUMNS)]
    # Positional, in Job's field order (the columns' order): keyword arguments cost four
    # times as much (1.9 against 0.4 us), and every claimed job is decoded here.
    return Job(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        JobState(r[5]),
        orjson.loads(r[6]),
        None if r[7] is None else orjson.loads(r[7]),
        r[8],
        r[9],
        r[10].timestamp(),
        r[11],
        r[12],
        r[13],
        _ts(r[14]),
        tuple(ErrorEntry.from_json(e) for e in orjson.loads(r[15])),
        r[16],
        r[17],
        r[18],
        orjson.loads(r[19]),
        r[20].timestamp(),
        _ts(r[21]),
        _ts(r[22]),
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The default reset runs four statements at every release (unlock, close cursors,
    # unlisten, reset settings). Pooled connections here hold no session state — LISTEN
    # lives on its own connection and every transaction is closed by its context manager —
    # so only an aborted transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PostgresStore:
    """A :class:`conveyor.store.base.Store` on PostgreSQL."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        listen: bool = True,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.listen = listen
        # Handoff rides on the LISTEN connection: its notice carries the job.
        self.capabilities = Capabilities(handoff=listen, listen=listen)
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._listeners: list[Listener] = []
        self._listen_task: asyncio.Task[None] | None = None
        self._limited: set[str] = set()
        self._plain_requests = Coalescer(self._create_plain_requests)
        self._lane: asyncpg.Connection | None = None
        self._lane_busy = False
        self._own_backends: set[int] = set()
        """Server pids of this store's pooled connections: their NOTIFYs come back on the
        LISTEN connection, but this store has already told its listeners."""
        self._offer_key: int | None = None
        """The advisory lock key the LISTEN connection holds, while it is up: offers for
        handoff carry it (a new one per connection, so offers made before a drop are dead
        at once, and a reconnect never waits for a lingering old session's lock)."""

    # -- connection ----------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                init=self._init_connection,
                reset=_reset_connection,
                max_inactive_connection_lifetime=0,
                timeout=self._connect_timeout,
                command_timeout=60,
                server_settings=_SESSION_SETTINGS if self.listen else {},
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreError(f"cannot open database {_safe(self.url)!r}: {exc}") from exc

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        # JSON columns travel as text both ways and orjson does the work: asyncpg's own
        # codec already passes text, and a custom codec would rule out binary COPY.
        # asyncpg has no built-in codec for the int4[], int8[] and float8[] parameters of
        # the exchange and heartbeat; it looks them up (three queries) on each connection's
        # first such statement, which put them in an idle worker's polls. Learn them now.
        await conn.prepare("SELECT NULL::int4[], NULL::int8[], NULL::float8[]")
        pid = conn.get_server_pid()
        self._own_backends.add(pid)
        # Forget the pid with the connection: the server may give it to another client's
        # backend, whose notices must not be taken for this store's echoes.
        conn.add_termination_listener(lambda _conn: self._own_backends.discard(pid))

    async def close(self) -> None:
        await self._plain_requests.close()
        lane, self._lane = self._lane, None
        if lane is not None:
            if self._lane_busy:
                lane.terminate()
            else:
                await lane.close()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _run(self, action: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``action`` on the store's own connection when it is free, else on a pooled
        one; database failures become StoreError.

        The pool's acquire and release cost 0.13-0.19 ms a call when the process had been
        idle (measured alternating the two with 5-25 ms gaps: an enqueue took 0.76-1.03 ms
        on a plain connection and 0.89-1.22 ms through the pool), and an idle worker's
        claim and the enqueue before it are both on the enqueue-to-start path. Calls that
        find it busy go to the pool, so concurrency is unchanged."""
        if self._pool is None:
            raise StoreError(f"store {_safe(self.url)!r} is not open")
        try:
            if not self._lane_busy:
                return await self._on_lane(action)
            async with self._pool.acquire() as conn:
                return await _guarded(conn, action)
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(str(exc)) from exc
        except (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.CannotConnectNowError,
            TimeoutError,
        ) as exc:
            raise StoreError(f"database {_safe(self.url)!r}: {type(exc).__name__}: {exc}") from exc

    async def _on_lane(self, action: Callable[[Conn], Awaitable[T]]) -> T:
        self._lane_busy = True
        try:
            if self._lane is None or self._lane.is_closed():
                conn = await asyncpg.connect(
                    self.url,
                    timeout=self._connect_timeout,
                    command_timeout=60,
                    server_settings=_SESSION_SETTINGS if self.listen else {},
                )
                await self._init_connection(conn)
                self._lane = conn
            lane = self._lane
            try:
                # The lane is a plain connection; actions are written for the pool's proxy,
                # which forwards to one.
                return await _guarded(cast(Conn, lane), action)
            except asyncpg.PostgresError:
                # A statement the server refused leaves the connection usable, unless the
                # session ended or a transaction was left open.
                if lane.is_closed() or lane.is_in_transaction():
                    self._drop_lane(lane)
                raise
            except BaseException:
                # Broken, or cut off mid-way: the next call opens another.
                self._drop_lane(lane)
                raise
        finally:
            self._lane_busy = False

    def _drop_lane(self, lane: asyncpg.Connection) -> None:
        if self._lane is lane:
            self._lane = None
        lane.terminate()

    # -- schema --------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        migrations = load_migrations("conveyor.store.postgres")

        async def apply(conn: Conn) -> list[int]:
            async with conn.transaction():
                # Two processes starting at once: the second waits here, then finds the
                # schema current.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS conveyor_schema "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
                )
                current = await conn.fetchval(_Q["schema_version"])
                applied = []
                for version, sql in migrations:
                    if version <= current:
                        continue
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO conveyor_schema (version, applied_at) VALUES ($1, now())",
                        version,
                    )
                    applied.append(version)
            columns = tuple(
                r[0]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'conveyor_jobs' AND table_schema = current_schema() "
                    "ORDER BY ordinal_position"
                )
            )
            if columns != JOB_COLUMNS:
                raise StoreError(
                    f"database {_safe(self.url)!r}: conveyor_jobs columns {columns} differ "
                    f"from what this version of Conveyor reads {JOB_COLUMNS}"
                )
            await self._load_limits(conn)
            return applied

        return await self._run(apply)

    async def schema_status(self) -> tuple[int, int]:
        latest = len(load_migrations("conveyor.store.postgres"))

        async def read(conn: Conn) -> int:
            exists = await conn.fetchval("SELECT to_regclass('conveyor_schema') IS NOT NULL")
            return int(await conn.fetchval(_Q["schema_version"])) if exists else 0

        return await self._run(read), latest

    async def _load_limits(self, conn: Conn) -> None:
        rows = await conn.fetch(_Q["limited_queues"])
        self._limited = {r[0] for r in rows}

    # -- producing -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        if not jobs:
            return []

        # Many jobs without unique keys go by binary COPY (about twice the rate of the
        # JSON statement for 10,000 jobs); others, and single jobs, by that one statement
        # with no explicit transaction: one round trip.
        bulk = len(jobs) >= _COPY_FROM and all(job.unique_key is None for job in jobs)
        try:
            if len(jobs) == 1:
                result, handed_off = await self._run(lambda conn: _insert_job(conn, jobs[0]))
                if result is not None:
                    # A job handed to a worker is heard of by that worker alone.
                    if not handed_off:
                        self._publish(JobsAvailable(frozenset({jobs[0].queue})))
                    return [result]
            results = await self._run(
                lambda conn: _copy_jobs(conn, jobs) if bulk else _insert_jobs(conn, jobs)
            )
        except (asyncpg.DataError, orjson.JSONEncodeError) as exc:
            raise DataRejected(f"a job could not be stored: {exc}") from exc
        self._publish(JobsAvailable(frozenset(job.queue for job in jobs)))
        return results

    async def enqueue_periodic(self, job: NewJob, tick: float) -> Enqueued | None:
        async def tx(conn: Conn) -> Enqueued | None:
            try:
                async with conn.transaction():
                    (result,) = await _insert_jobs(conn, [job])
                    taken = await conn.fetchval(_Q["insert_tick"], job.kind, tick, result.id)
                    if taken is None:
                        raise _TickTaken  # noqa: TRY301  (rolls the transaction back)
            except _TickTaken:
                return None
            return result

        result = await self._run(tx)
        if result is not None:
            self._publish(JobsAvailable(frozenset({job.queue})))
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
        offers: Offers | None = None,
    ) -> SettleResult:
        return await self._exchange(
            outcomes,
            progress,
            worker_id,
            claim,
            1000 if rescue else 0,
            offers.freed if offers is not None else None,
            offers.withdraw if offers is not None else False,
            offer=offers is not None,
        )

    async def _exchange(
        self,
        outcomes: Sequence[Outcome],
        progress: Sequence[Progress],
        worker_id: str,
        claim: ClaimRequest | None,
        rescue_limit: int,
        freed: Mapping[str, int] | None = None,
        withdraw: bool = False,
        *,
        offer: bool = False,
    ) -> SettleResult:
        """Run the exchange statement (see queries.sql); ``rescue_limit`` 0: no rescue;
        ``offer``: the claim offers the slots it leaves free."""
        queues = list(claim.slots) if claim is not None else []
        # Never a claimed queue's offer: the claim sets it, and one statement must not
        # change a row twice.
        freed = {q: n for q, n in (freed or {}).items() if q not in queues}
        try:
            args = self._exchange_args(
                claim, queues, worker_id, outcomes, progress, rescue_limit, offer
            )
        except orjson.JSONEncodeError as exc:
            raise DataRejected(f"an outcome could not be encoded: {exc}") from exc
        kinds = list(claim.kinds) if claim is not None else []
        tail = (rescue_limit > 0, list(freed), list(freed.values()), withdraw, kinds)
        # Without LISTEN this store cannot hear of new limits: it always locks.
        lock = bool(self._limited.intersection(queues)) or bool(queues and not self.listen)

        claim_only = not (outcomes or progress or rescue_limit or freed or withdraw)

        async def run(conn: Conn) -> list[asyncpg.Record]:
            if not lock:
                if claim_only:
                    return await conn.fetch(_Q["claim"], *args[:5], kinds)
                return await conn.fetch(_Q["exchange"], *args, [], *tail)
            async with conn.transaction():
                locked = await conn.fetch(_Q["lock_limited_queues"], queues)
                return await conn.fetch(_Q["exchange"], *args, [r[0] for r in locked], *tail)

        try:
            rows = await self._run(run)
        except asyncpg.PostgresError as exc:
            what = f"database {_safe(self.url)!r}: {type(exc).__name__}: {exc}"
            if isinstance(exc, _DATA_ERRORS):
                # One statement: nothing was recorded and nothing claimed.
                raise DataRejected(what) from exc
            # Any other refusal (a statement timeout, a deadlock) is retried by the worker.
            raise StoreError(what) from exc
        claimed, rescued, summary = _split_exchange(rows)
        next_run_at = _ts(summary["next_run_at"])
        unlocked = list(summary["unlocked_in"])
        if claim is not None and unlocked:
            # Queues with a limit this store had not heard of claimed nothing (the notice
            # is late, or was missed while LISTEN was down): claim them again, locked.
            self._limited.update(unlocked)
            slots = {q: claim.slots[q] for q in unlocked}
            more = await self._exchange(
                (), (), worker_id, replace(claim, slots=slots), 0, offer=offer
            )
            claimed.extend(more.claimed)
            if more.next_run_at is not None:
                next_run_at = min(next_run_at or more.next_run_at, more.next_run_at)
        done = set(zip(summary["settled_ids"], summary["settled_attempts"], strict=True))
        applied = tuple((o.job_id, o.attempt) in done for o in outcomes)
        wake = set(summary["requeued_in"])
        wake.update(j.queue for j in rescued if j.state is JobState.QUEUED)
        wake.update(
            o.queue
            for o, ok in zip(outcomes, applied, strict=True)
            if ok and o.kind in _ENDING and o.queue in self._limited
        )
        if wake:
            await self._run(lambda conn: conn.execute(_Q["notify_queues"], CHANNEL, sorted(wake)))
            self._publish(JobsAvailable(frozenset(wake)))
        claimed.sort(key=lambda j: (j.priority, j.run_at, j.id))
        rescue_result = (
            RescueResult.from_rows((j.id, j.state.value, j.queue) for j in rescued)
            if rescue_limit > 0
            else None
        )
        return SettleResult(
            applied, tuple(claimed), next_run_at, rescue_result, frozenset(summary["offered_in"])
        )

    def _exchange_args(
        self,
        claim: ClaimRequest | None,
        queues: list[str],
        worker_id: str,
        outcomes: Sequence[Outcome],
        reports: Sequence[Progress],
        rescue_limit: int,
        offer: bool,
    ) -> tuple[Any, ...]:
        """The exchange statement's parameters $1..$16."""
        return (
            queues,
            [claim.slots[q] for q in queues] if claim is not None else [],
            worker_id,
            claim.lease_s if claim is not None else 0.0,
            self._offer_key if claim is not None and offer else None,
            [o.job_id for o in outcomes],
            [o.attempt for o in outcomes],
            [o.kind.value for o in outcomes],
            [_result_text(o) for o in outcomes],
            [_dumps(o.error.to_json()) if o.error is not None else None for o in outcomes],
            [o.retry_in_s for o in outcomes],
            rescue_limit,
            [p.job_id for p in reports],
            [p.attempt for p in reports],
            [p.fraction for p in reports],
            [p.message for p in reports],
        )

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None = None,
    ) -> LeaseStatus:
        async def beat(conn: Conn) -> LeaseStatus:
            rows = await conn.fetch(
                _Q["heartbeat"],
                worker_id,
                list(jobs),
                list(jobs.values()),
                lease_s,
                renew,
                memory_mb,
            )
            return LeaseStatus(frozenset(r[0] for r in rows), frozenset(r[0] for r in rows if r[1]))

        return await self._run(beat)

    async def adopt(self, worker_id: str, known: Collection[int]) -> list[Job]:
        rows = await self._run(lambda conn: conn.fetch(_Q["adopt"], worker_id, list(known)))
        return [record_to_job(r) for r in rows]

    async def rescue(self, limit: int = 1000) -> RescueResult:
        result = await self._exchange((), (), "", None, limit)
        return result.rescued or RescueResult((), (), ())

    async def prune(self, older_than_s: float, limit: int = 1000) -> int:
        async def delete(conn: Conn) -> int:
            status = await conn.execute(_Q["prune"], older_than_s, limit)
            return int(status.rsplit(" ", 1)[-1])

        return await self._run(delete)

    # -- requests --------------------------------------------------------------------
    async def create_request(self, new: NewRequest) -> StoredRequest:
        if new.idempotency_key is None and new.job.unique_key is None:
            return await self._plain_requests(new)
        return await self._create_request(new)

    async def _create_plain_requests(
        self, news: list[NewRequest]
    ) -> list[StoredRequest | BaseException]:
        """Plain requests that arrived together, in one statement (see create_requests in
        queries.sql). Measured at 1,000 requests/s, with batches of 1.3 on average, this
        took PostgreSQL 0.24-0.34 ms of CPU per request against 0.59-0.75 for one
        create_request statement each. If the statement fails on what a request holds
        (JSON that jsonb refuses, say), each is created alone, so only that one fails."""
        doc = _dumps(
            [
                {
                    **_job_fields(i, new.job),
                    "caller_id": new.caller_id,
                    "request_kind": new.kind,
                    "input": new.input,
                    "http_request_id": new.http_request_id,
                }
                for i, new in enumerate(news)
            ]
        )
        try:
            rows = await self._run(lambda conn: conn.fetch(_Q["create_requests"], doc, CHANNEL))
        except asyncpg.PostgresError:
            return [await _outcome(self._create_request(new)) for new in news]
        self._publish(JobsAvailable(frozenset(new.job.queue for new in news)))
        by_ord = {row["ord"]: row for row in rows}
        return [
            StoredRequest(_record_to_request(row), True, row["queue_position"])
            for row in (by_ord[i] for i in range(len(news)))
        ]

    async def _create_request(self, new: NewRequest) -> StoredRequest:
        """One request in its own statement, with its Idempotency-Key and unique_key."""
        job = new.job
        args = (
            *_job_params(job),
            CHANNEL,
            new.caller_id,
            new.kind,
            _dumps(new.input),
            new.idempotency_key,
            new.http_request_id,
        )

        async def create(conn: Conn) -> asyncpg.Record:
            # Each pass either answers or saw a racing call commit what it needs to see
            # (see the statement): the next pass, with a new snapshot, answers.
            for _ in range(_CREATE_REQUEST_PASSES):
                try:
                    row = await conn.fetchrow(_Q["create_request"], *args)
                except asyncpg.UniqueViolationError:
                    continue
                if row is not None:
                    return row
            raise ConflictError(
                f"request with idempotency key {new.idempotency_key!r} and job unique_key "
                f"{job.unique_key!r} kept racing with other calls; submit again"
            )

        try:
            row = await self._run(create)
        except asyncpg.DataError as exc:
            raise DataRejected(f"a request could not be stored: {exc}") from exc
        created: bool = row["created"]
        if created:
            self._publish(JobsAvailable(frozenset({job.queue})))
        return StoredRequest(_record_to_request(row), created, row["queue_position"])

    async def get_request(self, request_id: int, tenant_id: str) -> Request | None:
        row = await self._run(lambda conn: conn.fetchrow(_Q["get_request"], request_id, tenant_id))
        return _record_to_request(row) if row is not None else None

    async def list_requests(self, flt: RequestFilter) -> list[Request]:
        params: list[Any] = [flt.tenant_id]
        clauses = ["r.tenant_id = $1"]
        for clause, value in (
            ("j.state = ${}", flt.state.value if flt.state else None),
            ("r.kind = ${}", flt.kind),
            ("r.created_at >= to_timestamp(${})", flt.created_after),
            ("r.created_at < to_timestamp(${})", flt.created_before),
            ("r.id < ${}", flt.before_id),
        ):
            if value is not None:
                params.append(value)
                clauses.append(clause.format(len(params)))
        params.append(flt.limit)
        sql = (
            "SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, "
            "r.http_request_id, r.created_at, j.* FROM conveyor_requests r "
            "JOIN conveyor_jobs j ON j.id = r.job_id "
            f"WHERE {' AND '.join(clauses)} ORDER BY r.id DESC LIMIT ${len(params)}"
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *params))
        return [_record_to_request(r) for r in rows]

    async def queue_position(self, job: Job) -> int:
        return int(
            await self._run(
                lambda conn: conn.fetchval(
                    _Q["queue_position"], job.queue, job.priority, job.run_at, job.id
                )
            )
        )

    # -- operating -------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        row = await self._run(lambda conn: conn.fetchrow(_Q["get_job"], job_id))
        return record_to_job(row) if row is not None else None

    async def list_jobs(self, flt: JobFilter) -> list[Job]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", flt.state.value if flt.state else None),
            ("queue", flt.queue),
            ("kind", flt.kind),
            ("tenant_id", flt.tenant_id),
        ):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} = ${len(params)}")
        for clause, bound in (
            ("id < ${}", flt.before_id),
            ("created_at >= to_timestamp(${})", flt.created_after),
            ("created_at < to_timestamp(${})", flt.created_before),
        ):
            if bound is not None:
                params.append(bound)
                clauses.append(clause.format(len(params)))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(flt.limit)
        sql = f"SELECT * FROM conveyor_jobs {where} ORDER BY id DESC LIMIT ${len(params)}"
        rows = await self._run(lambda conn: conn.fetch(sql, *params))
        return [record_to_job(r) for r in rows]

    async def cancel(self, job_id: int) -> Job | None:
        async def tx(conn: Conn) -> tuple[bool, Job | None]:
            async with conn.transaction():
                row = await conn.fetchrow(_Q["cancel"], job_id)
                if row is None:
                    found = await conn.fetchrow(_Q["get_job"], job_id)
                    return False, record_to_job(found) if found is not None else None
                job = record_to_job(row)
                if job.state is JobState.RUNNING:
                    await conn.execute(_Q["notify_cancel"], CHANNEL, job_id)
                return job.state is JobState.RUNNING, job

        asked_worker, job = await self._run(tx)
        if asked_worker:
            self._publish(CancelRequested(frozenset({job_id})))
        return job

    async def retry(self, job_id: int) -> Job | None:
        async def tx(conn: Conn) -> tuple[bool, Job | None]:
            async with conn.transaction():
                try:
                    row = await conn.fetchrow(_Q["retry"], job_id)
                except asyncpg.UniqueViolationError as exc:
                    raise ConflictError(
                        f"job {job_id} cannot be retried: another queued or running job "
                        "holds its unique_key; cancel that job first"
                    ) from exc
                if row is None:
                    found = await conn.fetchrow(_Q["get_job"], job_id)
                    return False, record_to_job(found) if found is not None else None
                job = record_to_job(row)
                await conn.execute(_Q["notify_queues"], CHANNEL, [job.queue])
                return True, job

        requeued, job = await self._run(tx)
        if requeued and job is not None:
            self._publish(JobsAvailable(frozenset({job.queue})))
        return job

    async def set_paused(self, queue: str, paused: bool) -> bool:
        async def tx(conn: Conn) -> bool:
            async with conn.transaction():
                if not await conn.fetchval(_Q["queue_exists"], queue):
                    return False
                await conn.execute(_Q["set_paused"], queue, paused)
                if paused:
                    await conn.execute(_Q["drop_offers"], queue)
                else:
                    await conn.execute(_Q["notify_queues"], CHANNEL, [queue])
                return True

        if not await self._run(tx):
            return False
        if not paused:
            self._publish(JobsAvailable(frozenset({queue})))
        return True

    async def set_queue_limit(self, queue: str, limit: int | None) -> bool:
        async def tx(conn: Conn) -> bool:
            async with conn.transaction():
                if not await conn.fetchval(_Q["queue_exists"], queue):
                    return False
                await conn.execute(_Q["set_limit"], queue, limit)
                if limit is not None:
                    await conn.execute(_Q["drop_offers"], queue)
                # 'l:' tells every store to reload its limits; 'q:' wakes the workers.
                await conn.execute("SELECT pg_notify($1, 'l:' || $2::text)", CHANNEL, queue)
                await conn.execute(_Q["notify_queues"], CHANNEL, [queue])
                return True

        if not await self._run(tx):
            return False
        if limit is None:
            self._limited.discard(queue)
        else:
            self._limited.add(queue)
        self._publish(JobsAvailable(frozenset({queue})))
        return True

    async def queue_stats(self, finished: bool = True) -> list[QueueStats]:
        async def read(conn: Conn) -> list[QueueStats]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                counts = list(await conn.fetch(_Q["stats_counts"]))
                if finished:
                    counts += await conn.fetch(_Q["stats_finished"], FINISHED_WINDOW_S)
                due = await conn.fetch(_Q["stats_due"])
                recent = await conn.fetch(_Q["stats_recent"])
                settings = await conn.fetch(_Q["queue_settings"])
                workers = [_worker(r) for r in await conn.fetch(_Q["list_workers"])]
                names = {r[0] for r in counts} | {r[0] for r in recent}
                names |= {r[0] for r in settings} | {q for w in workers for q in w.queues}
                run_times = await conn.fetch(_Q["stats_run_times"], sorted(names))
            return _queue_stats(counts, due, recent, run_times, settings, workers, finished)

        return await self._run(read)

    async def register_worker(self, info: WorkerInfo, lease_s: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                _Q["register_worker"],
                info.id,
                info.hostname,
                info.pid,
                _dumps(info.queues),
                lease_s,
                _dumps(list(info.kinds)),
                info.memory_mb,
            )
        )

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run(lambda conn: conn.execute(_Q["unregister_worker"], worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._run(lambda conn: conn.fetch(_Q["list_workers"]))
        return [_worker(r) for r in rows]

    # -- notices ---------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        if self.listen and self._listen_task is None:
            self._listen_task = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="conveyor-postgres-listen"
            )

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def _publish(self, notice: Notice) -> None:
        for listener in tuple(self._listeners):
            listener(notice)

    def _on_notification(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        tag, _, value = str(payload).partition(":")
        if tag == "h":
            # Never this store's echo: no enqueue tells its own listeners of a handoff.
            self._publish(_handoff(value))
            return
        if pid in self._own_backends:
            return
        if tag == "q":
            self._publish(JobsAvailable(frozenset({value})))
        elif tag == "c":
            self._publish(CancelRequested(frozenset({int(value)})))
        elif tag == "l":
            self._reload_limits_soon()

    def _reload_limits_soon(self) -> None:
        async def reload() -> None:
            with contextlib.suppress(StoreError):
                await self._run(self._load_limits)

        asyncio.get_running_loop().create_task(reload())

    async def _listen_forever(self) -> None:
        """Hold a LISTEN connection; when it drops, reconnect with backoff and tell the
        listeners that anything may have happened meanwhile."""
        delay = 0.1
        reconnected = False
        while True:
            lost = asyncio.Event()
            on_lost = functools.partial(_set_event, lost)
            try:
                conn = await asyncpg.connect(self.url, timeout=self._connect_timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("LISTEN connection failed; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            try:
                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, self._on_notification)
                # After LISTEN, so that every handoff to an offer with this key is heard.
                key = secrets.randbits(63)
                await conn.execute("SELECT pg_advisory_lock($1)", key)
                self._offer_key = key
                delay = 0.1
                self._publish(JobsAvailable(None))
                if reconnected:
                    self._publish(NoticesLost())
                reconnected = True
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed; retrying", error=str(exc))
            finally:
                self._offer_key = None
                if not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)


def _handoff(value: str) -> JobHandedOff:
    """Decode a handoff notice (see the part notify_or_hand_off in queries.sql)."""
    f = orjson.loads(value)
    if len(f) == 3:
        return JobHandedOff(f[0], f[1], f[2], None)
    # Positional, in Job's field order, as in record_to_job.
    job = Job(
        f[1],
        f[3],
        f[4],
        f[5],
        f[6],
        JobState.RUNNING,
        f[7],
        None,
        f[2],
        f[8],
        float(f[9]),
        f[10],
        f[11],
        f[0],
        float(f[12]),
        (),
        None,
        None,
        False,
        f[13],
        float(f[14]),
        float(f[15]),
        None,
    )
    return JobHandedOff(f[0], job.id, job.attempt, job)


def _result_text(o: Outcome) -> str | None:
    if o.kind is not OutcomeKind.COMPLETED:
        return None
    return o.result_json if o.result_json is not None else _dumps(o.result)


_DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.IntegrityConstraintViolationError,
)
"""Errors about the data of a statement (SQLSTATE classes 22, 54 and 23, and asyncpg's own
"invalid input for query argument"): sending it again gets the same answer."""


def _split_exchange(
    rows: Sequence[asyncpg.Record],
) -> tuple[list[Job], list[Job], asyncpg.Record]:
    """The claimed jobs, the rescued jobs and the summary row of an exchange."""
    claimed: list[Job] = []
    rescued: list[Job] = []
    summary: asyncpg.Record | None = None
    for row in rows:
        what = row[0]
        if what == "claimed":
            claimed.append(record_to_job(row, 1))
        elif what == "rescued":
            rescued.append(record_to_job(row, 1))
        else:
            summary = row
    if summary is None:
        raise StoreError("the exchange statement returned no summary row")
    return claimed, rescued, summary


async def _guarded(conn: Conn, action: Callable[[Conn], Awaitable[T]]) -> T:
    try:
        return await action(conn)
    except asyncpg.InternalClientError:
        # The server ended the session while the connection sat idle (pg_terminate_backend,
        # a restart): asyncpg read the FATAL message out of turn and the connection can run
        # nothing more until it notices the closed socket (MagicStack/asyncpg#1069). Drop
        # it so that a new one is opened.
        conn.terminate()
        raise


async def _outcome(call: Awaitable[T]) -> T | Exception:
    """What ``call`` returns, or the exception it raises."""
    try:
        return await call
    except Exception as exc:  # handed to the caller it belongs to
        return exc


def _set_event(event: asyncio.Event, _conn: object) -> None:
    event.set()


class _TickTaken(Exception):
    """Rolls back a periodic enqueue whose tick another worker enqueued first."""


_CREATE_REQUEST_PASSES = 3
"""A pass is repeated only after a racing call committed; two such races in a row are
already unlikely."""

_COPY_FROM = 64
"""Batches at least this large, without unique keys, are written with COPY."""

_COPY_COLUMNS = (
    "id",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "payload",
    "max_attempts",
    "timeout_s",
)
"""What a job due now with no meta needs: state, run_at, created_at and meta take their
column defaults, which equal the values written out (``now()`` is the transaction's)."""

_COPY_ALL_COLUMNS = (*_COPY_COLUMNS, "run_at", "meta")


async def _copy_jobs(conn: Conn, jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert jobs without unique keys by binary COPY, in one transaction with their
    NOTIFYs."""
    async with conn.transaction():
        row = await conn.fetchrow(_Q["reserve_ids"], len(jobs))
        if row is None:
            raise StoreError("the id reservation returned no row")
        ids: list[int] = row[0]
        now: datetime = row[1]
        # Per-job work is most of a bulk enqueue's client time: the common batch (all due
        # now, no meta) sends only the columns without defaults, and the rows are built as
        # COPY sends them, while the server inserts the earlier ones (a generator, not a
        # list: +9 % jobs/s, alternating the two, 4 runs each, twice).
        records: Iterator[tuple[Any, ...]] = (
            (
                job_id,
                job.tenant_id,
                job.queue,
                job.kind,
                job.priority,
                _dumps(job.payload),
                job.max_attempts,
                job.timeout_s,
            )
            for job_id, job in zip(ids, jobs, strict=True)
        )
        columns: tuple[str, ...] = _COPY_COLUMNS
        if any(job.run_at is not None or job.delay_s or job.meta for job in jobs):
            columns = _COPY_ALL_COLUMNS
            records = (
                (*record, _run_at(job, now), _dumps(job.meta))
                for record, job in zip(records, jobs, strict=True)
            )
        await conn.copy_records_to_table("conveyor_jobs", records=records, columns=columns)
        await conn.execute(_Q["notify_queues"], CHANNEL, sorted({job.queue for job in jobs}))
    return list(map(Enqueued, ids, repeat(True)))


def _run_at(job: NewJob, now: datetime) -> datetime:
    if job.run_at is not None:
        return datetime.fromtimestamp(job.run_at, UTC)
    return now + timedelta(seconds=job.delay_s) if job.delay_s else now


def _job_params(job: NewJob) -> tuple[Any, ...]:
    """A job as the $1..$11 of insert_job and create_request."""
    return (
        job.tenant_id,
        job.queue,
        job.kind,
        job.priority,
        _dumps(job.payload),
        job.max_attempts,
        job.run_at,
        job.delay_s,
        job.timeout_s,
        job.unique_key,
        _dumps(job.meta),
    )


def _job_fields(ordinal: int, job: NewJob) -> dict[str, Any]:
    """A job as a row of the JSON batches of insert_jobs and create_requests."""
    return {
        "ord": ordinal,
        "tenant_id": job.tenant_id,
        "queue": job.queue,
        "kind": job.kind,
        "priority": job.priority,
        "payload": job.payload,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "delay_s": job.delay_s,
        "timeout_s": job.timeout_s,
        "unique_key": job.unique_key,
        "meta": job.meta,
    }


async def _insert_job(conn: Conn, job: NewJob) -> tuple[Enqueued | None, bool]:
    """One job, handed to a waiting worker if one offers a slot; (None, False) when an
    active job holds its unique_key. The flag: whether it was handed off."""
    row = await conn.fetchrow(_Q["insert_job"], *_job_params(job), CHANNEL)
    if row is None:
        return None, False
    return Enqueued(row[0], created=True), row[2]


async def _insert_jobs(conn: Conn, jobs: Sequence[NewJob]) -> list[Enqueued]:
    """Insert in the caller's transaction; unique_key duplicates resolve to the active job
    (an earlier one of the same call included)."""
    first_of_key: dict[tuple[str, str], int] = {}
    batch: list[dict[str, Any]] = []
    repeats: dict[int, int] = {}  # input index -> index of the first job with its key
    for index, job in enumerate(jobs):
        if job.unique_key is not None:
            key = (job.tenant_id, job.unique_key)
            if key in first_of_key:
                repeats[index] = first_of_key[key]
                continue
            first_of_key[key] = index
        batch.append(_job_fields(index, job))
    row = await conn.fetchrow(_Q["insert_jobs"], _dumps(batch), CHANNEL)
    if row is None:
        raise StoreError("the insert statement returned no row")
    ids: list[int] = row[0]
    conflicts: list[int] = row[1] or []
    taken = set(conflicts)
    results: dict[int, Enqueued] = {
        row["ord"]: Enqueued(job_id, created=True)
        for row, job_id in zip(batch, ids, strict=True)
        if row["ord"] not in taken
    }
    if conflicts:
        found = await conn.fetch(
            _Q["find_active_unique"],
            [jobs[i].tenant_id for i in conflicts],
            [jobs[i].unique_key for i in conflicts],
        )
        holders = {(r[0], r[1]): r[2] for r in found}
        for index in conflicts:
            holder = holders.get((jobs[index].tenant_id, jobs[index].unique_key or ""))
            if holder is None:
                # The holder finished between the insert and the look-up.
                raise ConflictError(
                    f"unique_key {jobs[index].unique_key!r} was released while enqueueing; "
                    "enqueue again"
                )
            results[index] = Enqueued(holder, created=False)
    for index, first in repeats.items():
        results[index] = Enqueued(results[first].id, created=False)
    return [results[index] for index in range(len(jobs))]


def _record_to_request(row: Row) -> Request:
    """A request row followed by its job's columns (``get_request``'s shape)."""
    return Request(
        id=row[0],
        tenant_id=row[1],
        caller_id=row[2],
        kind=row[3],
        input=orjson.loads(row[4]),
        idempotency_key=row[5],
        http_request_id=row[6],
        created_at=row[7].timestamp(),
        job=record_to_job(row, 8),
    )


def _worker(row: Row) -> WorkerInfo:
    return WorkerInfo(
        id=row[0],
        hostname=row[1],
        pid=row[2],
        queues=orjson.loads(row[3]),
        started_at=row[4].timestamp(),
        last_seen_at=row[5].timestamp(),
        expires_at=row[6].timestamp(),
        kinds=tuple(orjson.loads(row[7])),
        memory_mb=row[8],
    )


def _queue_stats(
    counts: Sequence[Any],
    due: Sequence[Any],
    recent: Sequence[Any],
    run_times: Sequence[Any],
    settings: Sequence[Any],
    workers: Sequence[WorkerInfo],
    finished: bool,
) -> list[QueueStats]:
    return assemble_queue_stats(
        [(q, state, kind, n) for q, state, kind, n in counts],
        {q: (n, None if age is None else float(age)) for q, n, age in due},
        {(q, state): n for q, state, n in recent},
        {
            q: (None if p50 is None else float(p50), None if p95 is None else float(p95))
            for q, p50, p95 in run_times
        },
        {name: (paused, cap) for name, paused, cap in settings},
        workers,
        finished=finished,
    )
