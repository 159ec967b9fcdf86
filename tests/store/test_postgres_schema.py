"""PostgreSQL: a database newer than the code is refused and left as it is."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from conveyor.store.base import StoreError
from conveyor.store.postgres import PostgresStore
from conveyor.store.postgres.migrations import MIGRATOR
from pg_server import PgTestServer


def test_a_database_a_newer_release_migrated_is_refused_and_left_alone(
    pg: PgTestServer,
) -> None:
    # A database of its own: the session's is shared by the tests that follow.
    asyncio.run(_refused_and_left_alone(pg.create_database()))


async def _refused_and_left_alone(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    try:
        await store.migrate()
        assert await store.schema_status() == (MIGRATOR.latest, MIGRATOR.latest)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO conveyor_schema (version, applied_at) VALUES ($1, now())",
                MIGRATOR.latest + 1,
            )
        finally:
            await conn.close()
        with pytest.raises(StoreError, match=rf"schema version {MIGRATOR.latest + 1}, newer"):
            await store.migrate()
        assert await store.schema_status() == (MIGRATOR.latest + 1, MIGRATOR.latest)
    finally:
        await store.close()
