"""The PostgreSQL store's connections: a pool, and one plain connection tried first (the
lane), and the mapping of driver failures to :class:`~conveyor.store.base.StoreError`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from conveyor.store.base import ConflictError, DataRejected, StoreError
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
        self, url: str, *, session_settings: bool, pool_size: int, connect_timeout: float
    ) -> None:
        self.url = url
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

    async def run(self, action: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``action`` on the lane when it is free, else on a pooled connection; a lost
        connection becomes :class:`StoreError`, a unique violation :class:`ConflictError`,
        data the server refuses (a value out of range, a broken constraint)
        :class:`DataRejected`. Other refusals of the server (``asyncpg.PostgresError``)
        reach the caller as they are, for it to say what was refused."""
        if self._pool is None:
            raise StoreError(f"store {redact(self.url)!r} is not open")
        try:
            if not self._lane_busy:
                return await self._on_lane(action)
            async with self._pool.acquire() as conn:
                return await _guarded(conn, action)
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(str(exc)) from exc
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
