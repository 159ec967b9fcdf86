"""The PostgreSQL schema: numbered migrations (the shared :class:`Migrator`) applied in one
transaction under an advisory lock, so two processes starting at once apply each once
(the second waits for the lock, then finds the schema current)."""

from __future__ import annotations

from conveyor.store.migrator import Migrator
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.exchange import Limits
from conveyor.store.sqlfile import load_statements

_SQL = load_statements(__package__, "$", "schema.sql")

MIGRATOR = Migrator(__package__, _SQL)

_MIGRATION_LOCK = 0x636F6E76  # "conv"
"""The migration lock's key: any constant shared by every Conveyor process."""


async def migrate(db: Database, limits: Limits) -> list[int]:
    """Bring the database to :attr:`MIGRATOR.latest`; the versions applied. Then check
    the jobs table's columns and load the queue limits."""

    async def apply(conn: Conn) -> list[int]:
        async with conn.transaction():
            lock = _SQL["lock_migrations"]
            await conn.execute(lock.sql, *lock.args({"key": _MIGRATION_LOCK}))
            await conn.execute(MIGRATOR.create_table.sql)
            current = await conn.fetchval(MIGRATOR.read_version.sql)
            upgrade = MIGRATOR.upgrade(current, db.url)
            for step in upgrade.steps:
                await conn.execute(step.sql, *step.args)
        rows = await conn.fetch(MIGRATOR.read_columns.sql)
        MIGRATOR.check_columns([r["column_name"] for r in rows], db.url)
        await limits.load(conn)
        return upgrade.versions

    return await db.run(apply)


async def schema_status(db: Database) -> tuple[int, int]:
    """(applied version, latest version known to this code)."""

    async def read(conn: Conn) -> int:
        if not await conn.fetchval(MIGRATOR.table_exists.sql):
            return 0
        return int(await conn.fetchval(MIGRATOR.read_version.sql))

    return await db.run(read), MIGRATOR.latest
