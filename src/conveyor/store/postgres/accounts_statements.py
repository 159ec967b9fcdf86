"""The statements of the PostgreSQL accounts modules (``accounts_*.py``): each module's
``.sql`` file loaded once, its column parts checked against the records they decode, the
ways a verb runs one, and the scope of the verbs no tenant is known for."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from conveyor.store.accounts import TENANT_ID_PATTERN
from conveyor.store.base import ConflictError, DataRejected, StoreError
from conveyor.store.columns import Table, column_list
from conveyor.store.postgres.connection import Conn, Scope
from conveyor.store.sqlfile import load_parts, load_statements

R = TypeVar("R")

NO_TENANT = Scope("")
"""The scope of a verb made before a tenant is known, or for what no tenant owns (users,
refresh tokens, signing keys): the API's store runs it as its role with the tenant set to
``''``, which no tenant id matches, so row security shows it no tenant's row and only the
functions of migration 0011 reach what it needs. Unlike an operator's scope, it widens
nothing."""


def timestamp(value: datetime) -> float:
    """A ``timestamptz`` column as Unix seconds, as the records hold times."""
    return value.timestamp()


class AccountStatements:
    """The named statements of one ``.sql`` file of this package. ``tables`` maps each
    ``-- part: *_columns`` of the file to the table it must list, checked now, at import."""

    def __init__(self, filename: str, tables: Mapping[str, Table[Any]]) -> None:
        self._sql = load_statements(__package__, "$", filename)
        parts = load_parts(__package__, filename)
        for part, table in tables.items():
            table.check(column_list(parts[part]), f"{filename} part {part}")

    async def fetchrow(
        self, conn: Conn, name: str, values: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        stmt = self._sql[name]
        return await conn.fetchrow(stmt.sql, *stmt.args(values))

    async def fetch(self, conn: Conn, name: str, values: Mapping[str, Any]) -> list[asyncpg.Record]:
        stmt = self._sql[name]
        return await conn.fetch(stmt.sql, *stmt.args(values))

    async def changed(self, conn: Conn, name: str, values: Mapping[str, Any]) -> int:
        """How many rows the statement changed."""
        stmt = self._sql[name]
        status = await conn.execute(stmt.sql, *stmt.args(values))
        return int(status.rsplit(" ", 1)[-1])

    async def count(self, conn: Conn, name: str, values: Mapping[str, Any]) -> int:
        """The count a statement selects (a function of migration 0011 that changes rows
        answers how many)."""
        stmt = self._sql[name]
        return int(await conn.fetchval(stmt.sql, *stmt.args(values)))

    async def one(
        self, conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> R | None:
        row = await self.fetchrow(conn, name, values)
        return None if row is None else table.decode(row)

    async def inserted(
        self, conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> R:
        """The row of a statement that always returns one (``INSERT … RETURNING``)."""
        row = await self.fetchrow(conn, name, values)
        if row is None:
            raise StoreError(f"statement {name!r} returned no row")
        return table.decode(row)

    async def all(
        self, conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> list[R]:
        return [table.decode(row) for row in await self.fetch(conn, name, values)]


def taken(exc: ConflictError, index: str) -> bool:
    """Whether ``exc`` broke the unique index or key ``index``."""
    cause = exc.__cause__
    return isinstance(cause, asyncpg.UniqueViolationError) and cause.constraint_name == index


def tenant_refused(tenant_id: str, exc: DataRejected) -> DataRejected:
    """``exc``, or one that says why when ``tenant_id`` is outside the pattern."""
    if re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        return exc
    return DataRejected(f"tenant id {tenant_id!r} must match {TENANT_ID_PATTERN}: {exc}")
