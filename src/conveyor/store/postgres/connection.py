"""The PostgreSQL store's connections: a pool, and one plain connection tried first (the
lane); the tenant scope of the API's calls; and the mapping of driver failures to
:class:`~conveyor.store.base.StoreError`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from conveyor.store.base import ConflictError, DataRejected, StoreError, TransactionRolledBack
from conveyor.store.sqlfile import load_statements
from conveyor.store.urls import redact

T = TypeVar("T")
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_SQL = load_statements(__package__, "$", "connection.sql")

SESSION_SETTINGS = {
    # PostgreSQL kept choosing custom plans for the exchange statement, re-planning it at
    # every call.
    "plan_cache_mode": "force_generic_plan",
    # The claim's LIMIT is a parameter, so the planner prices the exchange statement as if
    # it took a tenth of the claim index; past ~60,000 rows that crosses jit_above_cost and
    # every call spent far longer compiling than running.
    "jit": "off",
}
"""Set when each connection starts. Behind PgBouncer (listen=False) start-up parameters it
does not know are refused, so there they are left out: set them on the role instead
(ALTER ROLE ... SET jit = off)."""

MAX_CACHED_STATEMENT = 64 * 1024
"""The longest SQL text asyncpg keeps prepared (its default is 15 KiB). A statement past
the limit is parsed and planned again at every call: the fair-share exchange (16 KiB with
its comments) spent more time being planned than run, halving a worker's throughput."""

API_ROLE = "conveyor_api"
"""The role migration 0009 creates for the API: it owns nothing, has no BYPASSRLS, and row
security policies show it one tenant's rows at a time (docs/operations.md)."""

RoleSetting: TypeAlias = "Literal['auto', 'none'] | str"
"""``CONVEYOR_DATABASE_ROLE``: ``auto`` (:data:`API_ROLE` when it exists and the login role
may act as it), ``none`` (the login role itself), or the name of a role to act as."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose rows one call may see and change: one tenant's, or every tenant's (an
    operator's). A store acting as a role (the API's) applies it in the database as well
    as in its statements' ``WHERE``."""

    tenant_id: str | None
    """None: every tenant (an operator, the CLI, a worker)."""

    @property
    def operator(self) -> bool:
        return self.tenant_id is None


OPERATOR = Scope(None)
"""Every tenant's rows."""


CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
"""What opening a connection raises when the server cannot be reached or refuses it."""

_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    TimeoutError,
)
"""Failures of the connection rather than of a statement."""

DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.IntegrityConstraintViolationError,
)
"""Errors about the data of a statement (SQLSTATE classes 22, 54 and 23, and asyncpg's own
"invalid input for query argument"): sending it again gets the same answer."""


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The default reset runs four statements at every release (unlock, close cursors,
    # unlisten, reset settings). Pooled connections here hold no session state — LISTEN
    # lives on its own connection and every transaction is closed by its context manager —
    # so only an aborted transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute(_SQL["rollback"].sql)


class Database:
    """Where the store's statements run.

    Each call runs on the lane, the store's own plain connection, when it is free, else on
    a pooled one: the pool's acquire and release are on the enqueue-to-start path (an idle
    worker's claim and the enqueue before it) and cost more there than a statement's own
    client time. Calls that find the lane busy go to the pool, so concurrency is unchanged.
    """

    def __init__(
        self,
        url: str,
        *,
        session_settings: bool,
        pool_size: int,
        connect_timeout: float,
        role: RoleSetting = "none",
    ) -> None:
        self.url = url
        self._role_setting = role
        self.role: str | None = None
        """The role scoped calls act as (see :meth:`resolve_role`); None: the login role,
        with no transaction of their own (one round trip)."""
        self._settings = SESSION_SETTINGS if session_settings else {}
        self._pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._lane: asyncpg.Connection | None = None
        self._lane_busy = False
        self.own_backends: set[int] = set()
        """Server pids of this store's connections: their NOTIFYs come back on the LISTEN
        connection, but this store has already told its listeners."""

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
                timeout=self.connect_timeout,
                command_timeout=60,
                server_settings=self._settings,
                max_cacheable_statement_size=MAX_CACHED_STATEMENT,
            )
        except CONNECT_ERRORS as exc:
            raise StoreError(f"cannot open database {redact(self.url)!r}: {exc}") from exc

    async def close(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            if self._lane_busy:
                lane.terminate()
            else:
                await lane.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        # JSON columns travel as text both ways and orjson does the work: asyncpg's own
        # codec already passes text, and a custom codec would rule out binary COPY.
        await conn.prepare(_SQL["learn_array_types"].sql)
        pid = conn.get_server_pid()
        self.own_backends.add(pid)
        # Forget the pid with the connection: the server may give it to another client's
        # backend, whose notices must not be taken for this store's echoes.
        conn.add_termination_listener(lambda _conn: self.own_backends.discard(pid))

    async def resolve_role(self) -> None:
        """Decide :attr:`role` from the setting: ``auto`` takes :data:`API_ROLE` once it
        exists (migration 0009) and the login role may act as it; a name must be usable
        now. Raises :class:`StoreError` for a named role that is not."""
        if self._role_setting == "none":
            return
        wanted = API_ROLE if self._role_setting == "auto" else self._role_setting
        stmt = _SQL["role_usable"]
        usable = await self.run(lambda conn: conn.fetchval(stmt.sql, *stmt.args({"role": wanted})))
        if usable is None and self._role_setting != "auto":
            raise StoreError(
                f"database {redact(self.url)!r}: CONVEYOR_DATABASE_ROLE={wanted!r} does not "
                "exist or the login role is not a member of it; grant it (GRANT "
                f"{wanted} TO <login role>, see docs/operations.md) or set "
                "CONVEYOR_DATABASE_ROLE=auto"
            )
        self.role = usable

    async def run(self, action: Callable[[Conn], Awaitable[T]], scope: Scope | None = None) -> T:
        """Run ``action``: for a store acting as a role with a ``scope``, in a transaction
        of its own that first applies the scope (:meth:`transact`); else as one call.
        ``scope`` None: as the login role (migrations, the schema's version, the queue
        limits and workers, which no tenant owns)."""
        if scope is not None and self.role is not None:
            return await self.transact(action, scope)
        return await self._run(action)

    async def transact(
        self,
        action: Callable[[Conn], Awaitable[T]],
        scope: Scope | None = None,
        *,
        isolation: Literal["read_committed", "repeatable_read"] | None = None,
        readonly: bool = False,
    ) -> T:
        """Run ``action`` in a transaction; for a store acting as a role with a ``scope``
        the transaction first takes the role and the scope (``set_scope``), so the row
        security policies hold ``action`` to the scope's rows whatever it runs."""
        role = self.role if scope is not None else None

        async def tx(conn: Conn) -> T:
            async with conn.transaction(isolation=isolation, readonly=readonly):
                if role is not None and scope is not None:
                    stmt = _SQL["set_scope"]
                    values = {"role": role, "tenant_id": scope.tenant_id}
                    await conn.execute(stmt.sql, *stmt.args({**values, "operator": scope.operator}))
                return await action(conn)

        return await self._run(tx)

    async def _run(self, action: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``action`` on the lane when it is free, else on a pooled connection; a lost
        connection becomes :class:`StoreError`, a unique violation :class:`ConflictError`,
        data the server refuses (a value out of range, a broken constraint)
        :class:`DataRejected`, a transaction the server rolled back to break a deadlock or
        a serialization conflict :class:`TransactionRolledBack`. Other refusals of the
        server (``asyncpg.PostgresError``) reach the caller as they are, for it to say what
        was refused."""
        if self._pool is None:
            raise StoreError(f"store {redact(self.url)!r} is not open")
        try:
            if not self._lane_busy:
                return await self._on_lane(action)
            async with self._pool.acquire() as conn:
                return await _guarded(conn, action)
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(str(exc)) from exc
        except asyncpg.TransactionRollbackError as exc:
            raise TransactionRolledBack(self.failure(exc)) from exc
        except DATA_ERRORS as exc:
            raise DataRejected(self.failure(exc)) from exc
        except _LOST as exc:
            raise StoreError(self.failure(exc)) from exc

    def failure(self, exc: BaseException) -> str:
        """A message naming the database (never its password) and what went wrong."""
        return f"database {redact(self.url)!r}: {type(exc).__name__}: {exc}"

    async def _on_lane(self, action: Callable[[Conn], Awaitable[T]]) -> T:
        self._lane_busy = True
        try:
            if self._lane is None or self._lane.is_closed():
                conn = await asyncpg.connect(
                    self.url,
                    timeout=self.connect_timeout,
                    command_timeout=60,
                    server_settings=self._settings,
                    max_cacheable_statement_size=MAX_CACHED_STATEMENT,
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

    async def connect_plain(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool and without the session settings (the
        LISTEN connection). Raises what :data:`CONNECT_ERRORS` lists."""
        return await asyncpg.connect(self.url, timeout=self.connect_timeout)


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
