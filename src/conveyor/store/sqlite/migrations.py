"""The SQLite schema: numbered migrations run in one write transaction.

``executescript`` would commit the open transaction, so each migration is cut into its
statements and they run one by one: a migration and its version row land together, and
two processes starting at once apply each migration once (the second waits for the
write lock, then finds the schema current).
"""

from __future__ import annotations

import sqlite3

from conveyor.store.base import StoreError
from conveyor.store.migrator import Migrator
from conveyor.store.sqlite.connection import Database
from conveyor.store.sqlite.queries import Q


def split_statements(sql: str) -> list[str]:
    """The statements of a migration script, in order."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") for part in buffer.strip().splitlines()
    ):
        raise StoreError(f"migration ends with an unterminated statement: {buffer.strip()!r}")
    return statements


MIGRATOR = Migrator(__package__, Q, split=split_statements)


async def migrate(db: Database) -> list[int]:
    """Bring the database to :attr:`MIGRATOR.latest`; the versions applied."""

    def apply(conn: sqlite3.Connection, now: float) -> list[int]:
        conn.execute(MIGRATOR.create_table.sql)
        current = int(conn.execute(MIGRATOR.read_version.sql).fetchone()[0])
        upgrade = MIGRATOR.upgrade(current, db.url, now=now)
        for step in upgrade.steps:
            conn.execute(step.sql, step.args)
        return upgrade.versions

    applied = await db.write(apply)
    columns = await db.read(
        lambda conn, now: [row[0] for row in conn.execute(MIGRATOR.read_columns.sql)]
    )
    MIGRATOR.check_columns(columns, db.url)
    return applied


async def schema_status(db: Database) -> tuple[int, int]:
    """(applied version, latest version known to this code)."""

    def read(conn: sqlite3.Connection, now: float) -> int:
        if not conn.execute(MIGRATOR.table_exists.sql).fetchone()[0]:
            return 0
        return int(conn.execute(MIGRATOR.read_version.sql).fetchone()[0])

    return await db.read(read), MIGRATOR.latest
