"""The SQLite file and the one thread that owns its connection.

Every call runs one whole transaction on that thread, so the event loop never blocks on
disk and a transaction costs one thread hop, not one per statement. Writers take the
file's write lock up front (``BEGIN IMMEDIATE``), which is what makes claims from several
processes exclusive. ``synchronous=FULL`` by default: an accepted job survives a power
loss.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import orjson

from conveyor.store.base import ConflictError, DataRejected, StoreError
from conveyor.store.sqlite.queries import Q
from conveyor.store.urls import redact

T = TypeVar("T")

Tx = Callable[[sqlite3.Connection, float], T]
"""A transaction's body: ``fn(conn, now)``, ``now`` the store's clock (Unix seconds)."""

_REFUSED = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    UnicodeEncodeError,
    OverflowError,
    orjson.JSONEncodeError,
)
"""Raised about the data of a call, not the database: a constraint, or a value that could
not be encoded (text that is not UTF-8, an integer past 64 bits, a value not JSON)."""

_SYNCHRONOUS = {"FULL": Q["synchronous_full"], "NORMAL": Q["synchronous_normal"]}


def sqlite_path(url: str) -> str:
    """The file path in ``sqlite:///relative/path`` or ``sqlite:////absolute/path``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise StoreError(
            f"database URL {redact(url)!r} is not a SQLite URL; write "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path == ":memory:" or path.startswith("file:"):
        raise StoreError(
            f"database URL {redact(url)!r} names no file; Conveyor's processes share the "
            "database through a file, e.g. sqlite:///./conveyor.db"
        )
    return path


class Database:
    """One connection to the file at ``url``, used from its own thread only."""

    def __init__(self, url: str, *, synchronous: str, busy_timeout_ms: int) -> None:
        self.url = url
        self.path = sqlite_path(url)
        if synchronous not in _SYNCHRONOUS:
            raise StoreError(f"synchronous={synchronous!r}: use FULL or NORMAL")
        self._synchronous = _SYNCHRONOUS[synchronous]
        self._busy_timeout_s = busy_timeout_ms / 1000
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def open(self) -> None:
        """Connect (WAL, the durability asked for); a no-op when open."""
        if self._executor is not None:
            return
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise StoreError(
                f"cannot open database {redact(self.url)!r}: folder {str(parent)!r} does not exist"
            )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        try:
            self._conn = await self.call(self._connect)
        except (StoreError, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            cause = exc.__cause__ or exc
            raise StoreError(f"cannot open database {redact(self.url)!r}: {cause}") from cause

    def _connect(self) -> sqlite3.Connection:
        # The timeout is SQLite's busy timeout: how long a statement waits for a lock.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout_s
        )
        try:
            mode = conn.execute(Q["journal_wal"].sql).fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL is needed")
            for statement in (self._synchronous, Q["foreign_keys_on"], Q["temp_store_memory"]):
                conn.execute(statement.sql)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the connection and stop the thread; safe to call twice."""
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._hop(conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def connection(self) -> sqlite3.Connection:
        """The connection, for code running on the store's thread."""
        if self._conn is None:
            raise StoreError(f"store {redact(self.url)!r} is not open")
        return self._conn

    async def _hop(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError(f"store {redact(self.url)!r} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def run_now(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread and wait for it, blocking the caller: only for a
        read of microseconds that must be done before the caller goes on."""
        if self._executor is None:
            raise StoreError(f"store {redact(self.url)!r} is not open")
        return self._executor.submit(fn).result()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a whole transaction, or nothing that writes) on the thread.

        SQLite answers "database is locked" without waiting out the busy timeout when
        waiting could deadlock, as two processes starting at once on a new file do.
        ``fn`` left nothing behind (a transaction rolls back on error), so it is run
        again until the busy timeout is up. Errors about the call's data become
        :class:`DataRejected` (:class:`ConflictError` for a uniqueness rule), others
        :class:`StoreError`."""
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.005
        while True:
            try:
                return await self._hop(fn)
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc):
                    raise ConflictError(self._say(exc)) from exc
                raise DataRejected(self._say(exc)) from exc
            except _REFUSED as exc:
                raise DataRejected(self._say(exc)) from exc
            except sqlite3.OperationalError as exc:
                if "malformed JSON" in str(exc):
                    raise DataRejected(self._say(exc)) from exc
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise StoreError(self._say(exc)) from exc
            except sqlite3.Error as exc:
                raise StoreError(self._say(exc)) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _say(self, exc: BaseException) -> str:
        return f"database {redact(self.url)!r}: {type(exc).__name__}: {exc}"

    async def write(self, fn: Tx[T]) -> T:
        """Run ``fn(conn, now)`` in one ``BEGIN IMMEDIATE`` transaction on the thread."""

        def tx() -> T:
            conn = self.connection()
            conn.execute(_BEGIN_WRITE)
            try:
                result = fn(conn, time.time())
                conn.execute(_COMMIT)
            except BaseException:
                conn.execute(_ROLLBACK)
                raise
            return result

        return await self.call(tx)

    async def read(self, fn: Tx[T]) -> T:
        """Run ``fn(conn, now)`` in one read transaction (a consistent snapshot)."""

        def tx() -> T:
            conn = self.connection()
            conn.execute(_BEGIN_READ)
            try:
                return fn(conn, time.time())
            finally:
                conn.execute(_COMMIT)

        return await self.call(tx)

    async def read_statement(self, fn: Tx[T]) -> T:
        """Run ``fn(conn, now)``, which reads with one statement, on the thread without a
        transaction around it: a statement sees one snapshot on its own, so BEGIN and
        COMMIT would add two statements' cost and no consistency (the API-key look-up
        made at every call with a key)."""

        def statement() -> T:
            return fn(self.connection(), time.time())

        return await self.call(statement)

    def data_version(self) -> int:
        """SQLite's count of commits by other connections (on the thread)."""
        return int(self.connection().execute(_DATA_VERSION).fetchone()[0])


_BEGIN_WRITE = Q["begin_write"].sql
_BEGIN_READ = Q["begin_read"].sql
_COMMIT = Q["commit"].sql
_ROLLBACK = Q["rollback"].sql
_DATA_VERSION = Q["data_version"].sql
