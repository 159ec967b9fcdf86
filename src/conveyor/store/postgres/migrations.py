"""The PostgreSQL store's schema: numbered migrations applied under an advisory lock."""

from __future__ import annotations

from conveyor.store.base import StoreError
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.exchange import Limits
from conveyor.store.records import JOB_COLUMNS
from conveyor.store.sqlfile import load_migrations, load_statements
from conveyor.store.urls import redact

_SQL = load_statements(__package__, "$", "schema.sql")

_MIGRATION_LOCK = 0x636F6E76  # "conv"
"""The migration lock's key: any constant shared by every Conveyor process."""


async def migrate(db: Database, limits: Limits) -> list[int]:
    """Apply pending migrations; returns the versions applied. Then check the jobs table's
    columns and load the queue limits."""
    migrations = load_migrations(__package__)

    async def apply(conn: Conn) -> list[int]:
        async with conn.transaction():
            lock = _SQL["lock_migrations"]
            await conn.execute(lock.sql, *lock.args({"key": _MIGRATION_LOCK}))
            await conn.execute(_SQL["schema_table"].sql)
            current = await conn.fetchval(_SQL["schema_version"].sql)
            applied = []
            record = _SQL["schema_record"]
            for version, sql in migrations:
                if version <= current:
                    continue
                await conn.execute(sql)
                await conn.execute(record.sql, *record.args({"version": version}))
                applied.append(version)
        rows = await conn.fetch(_SQL["job_columns"].sql)
        columns = tuple(r["column_name"] for r in rows)
        if columns != JOB_COLUMNS:
            raise StoreError(
                f"database {redact(db.url)!r}: conveyor_jobs columns {columns} differ "
                f"from what this version of Conveyor reads {JOB_COLUMNS}"
            )
        await limits.load(conn)
        return applied

    return await db.run(apply)


async def schema_status(db: Database) -> tuple[int, int]:
    latest = len(load_migrations(__package__))

    async def read(conn: Conn) -> int:
        if not await conn.fetchval(_SQL["schema_exists"].sql):
            return 0
        return int(await conn.fetchval(_SQL["schema_version"].sql))

    return await db.run(read), latest
