"""PostgreSQL: run_at values an earlier release stored beyond what Python reads back."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from test_migrations_upgrade import pg_at_version, pg_database, pg_drop

from conveyor.store.postgres import PostgresStore
from conveyor.store.records import JobFilter
from pg_server import PgTestServer

INSERT_JOB = (
    "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, payload, max_attempts, run_at)"
    " VALUES ('default', 'default', 'test.noop', 2, '{}', 3, $1::text::timestamptz) RETURNING id"
)


async def test_migration_7_brings_unreadable_run_at_values_into_range(pg: PgTestServer) -> None:
    # A database of its own at version 6, as an upgraded database holds the rows: the
    # shared session database is at the latest version, and its later migrations cannot
    # run twice.
    name = f"{pg.database}_run_at"
    url = await pg_database(pg, name)
    await pg_at_version(url, 6)
    conn = await asyncpg.connect(url)
    try:
        # What `--delay 1e30` stored before the limits: readable by the server only.
        far = await conn.fetchval(INSERT_JOB, "200000-01-01 00:00:00+00")
        early = await conn.fetchval(INSERT_JOB, "0100-01-01 00:00:00+00 BC")
        ok = await conn.fetchval(INSERT_JOB, "2030-01-01 00:00:00+00")
    finally:
        await conn.close()
    store = PostgresStore(url)
    await store.open()
    try:
        assert 7 in await store.migrate()

        jobs = {job.id: job for job in await store.list_jobs(JobFilter(limit=10))}
        assert set(jobs) == {far, early, ok}
        assert datetime.fromtimestamp(jobs[far].run_at, UTC).year == 9999
        assert datetime.fromtimestamp(jobs[early].run_at, UTC).year == 1
        assert datetime.fromtimestamp(jobs[ok].run_at, UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    finally:
        await store.close()
        await pg_drop(pg, name)
