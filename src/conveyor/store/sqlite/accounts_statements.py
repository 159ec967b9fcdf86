"""The statements of the SQLite accounts modules (``accounts_*.py``): each module's
``.sql`` file loaded once, its column parts checked against the records they decode, and
the ways a verb runs one."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from typing import Any, TypeVar

from conveyor.store.accounts import TENANT_ID_PATTERN
from conveyor.store.base import ConflictError, DataRejected
from conveyor.store.columns import Table, column_list
from conveyor.store.sqlfile import load_parts, load_statements

R = TypeVar("R")


class AccountStatements:
    """The named statements of one ``.sql`` file of this package. ``tables`` maps each
    ``-- part: *_columns`` of the file to the table it must list, checked now, at import."""

    def __init__(self, filename: str, tables: Mapping[str, Table[Any]]) -> None:
        self._sql = load_statements(__package__, "?", filename)
        parts = load_parts(__package__, filename)
        for part, table in tables.items():
            table.check(column_list(parts[part]), f"{filename} part {part}")

    def run(self, conn: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> sqlite3.Cursor:
        statement = self._sql[name]
        return conn.execute(statement.sql, statement.args(values))

    def changed(self, conn: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> int:
        """How many rows the statement changed."""
        return self.run(conn, name, values).rowcount

    def one(
        self, conn: sqlite3.Connection, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> R | None:
        row = self.run(conn, name, values).fetchone()
        return None if row is None else table.decode(row)

    def inserted(
        self, conn: sqlite3.Connection, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> R:
        """The row of a statement that always returns one (``INSERT … RETURNING``)."""
        return table.decode(self.run(conn, name, values).fetchone())

    def all(
        self, conn: sqlite3.Connection, table: Table[R], name: str, values: Mapping[str, Any]
    ) -> list[R]:
        return [table.decode(row) for row in self.run(conn, name, values)]


def taken(exc: ConflictError, column: str) -> bool:
    """Whether ``exc`` broke the uniqueness of ``column`` (``table.column``)."""
    return f"conveyor_{column}" in str(exc.__cause__)


def tenant_refused(tenant_id: str, exc: DataRejected) -> DataRejected:
    """``exc``, or one that says why when ``tenant_id`` is outside the pattern."""
    if re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        return exc
    return DataRejected(f"tenant id {tenant_id!r} must match {TENANT_ID_PATTERN}: {exc}")
