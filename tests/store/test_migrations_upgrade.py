"""Upgrades: a database left at any earlier schema version, as a release before this one
left it, is brought by ``migrate()`` to the current version and then has exactly the
schema of a freshly migrated database.

The earlier versions are built from the migration files themselves (1..k applied, the
versions recorded in ``conveyor_schema`` as the stores record them), so the test needs no
copy of an old release. The schemas are compared from the catalogues: SQLite's
``sqlite_master`` and ``PRAGMA``s, PostgreSQL's ``pg_catalog``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlfile import load_migrations
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

SQLITE_MIGRATIONS = load_migrations("conveyor.store.sqlite")
POSTGRES_MIGRATIONS = load_migrations("conveyor.store.postgres")

Schema = dict[str, list[tuple[Any, ...]]]
"""What a catalogue says about a database, by topic, each a sorted list of rows."""


def earlier_versions(migrations: list[tuple[int, str]]) -> list[Any]:
    latest = len(migrations)
    return [pytest.param(k, id=f"from-v{k}-to-v{latest}") for k in range(1, latest)]


def assert_same_schema(upgraded: Schema, fresh: Schema) -> None:
    assert upgraded.keys() == fresh.keys()
    for topic in fresh:
        assert upgraded[topic] == fresh[topic], f"{topic} differ after the upgrade"


# -- SQLite ----------------------------------------------------------------------------------
def sqlite_at_version(path: Path, k: int) -> None:
    """A database file holding migrations 1..k, recorded as ``SqliteStore.migrate`` does."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TABLE conveyor_schema (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for version, sql in SQLITE_MIGRATIONS[:k]:
            conn.executescript(sql)
            conn.execute(
                "INSERT INTO conveyor_schema (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
    finally:
        conn.close()


def sqlite_schema(path: Path) -> Schema:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        tables = [name for kind, name, _, _ in objects if kind == "table"]
        schema: Schema = {"objects": objects, "columns": [], "indexes": [], "foreign keys": []}
        for table in tables:
            schema["columns"] += [
                (table, *row) for row in conn.execute(f"PRAGMA table_xinfo({table!r})")
            ]
            schema["foreign keys"] += [
                (table, *row) for row in conn.execute(f"PRAGMA foreign_key_list({table!r})")
            ]
            # index_list's first column is a position that says nothing about the index.
            for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({table!r})"):
                keys = conn.execute(f"PRAGMA index_xinfo({index!r})").fetchall()
                schema["indexes"].append((table, index, unique, origin, partial, tuple(keys)))
        schema["indexes"].sort()
        schema["versions"] = conn.execute(
            "SELECT version FROM conveyor_schema ORDER BY version"
        ).fetchall()
        return schema
    finally:
        conn.close()


async def sqlite_migrated(path: Path) -> list[int]:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        applied = await store.migrate()
        assert await store.schema_status() == (len(SQLITE_MIGRATIONS),) * 2
        return applied
    finally:
        await store.close()


@pytest.mark.parametrize("k", earlier_versions(SQLITE_MIGRATIONS))
async def test_a_sqlite_database_at_an_earlier_version_upgrades_to_the_fresh_schema(
    tmp_path: Path, k: int
) -> None:
    latest = len(SQLITE_MIGRATIONS)
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    assert await sqlite_migrated(fresh) == list(range(1, latest + 1))
    sqlite_at_version(old, k)
    store = SqliteStore(f"sqlite:///{old}")
    await store.open()
    try:
        assert await store.schema_status() == (k, latest)
    finally:
        await store.close()

    assert await sqlite_migrated(old) == list(range(k + 1, latest + 1))

    assert_same_schema(sqlite_schema(old), sqlite_schema(fresh))


# -- PostgreSQL ------------------------------------------------------------------------------
PG_CATALOGUE = {
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, coalesce(c.reloptions, '{}'),
               c.relrowsecurity, c.relforcerowsecurity
        FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               a.attisdropped, a.attcollation::regcollation::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = current_schema() ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid),
               condeferrable, condeferred, convalidated
        FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
        ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, min_value, max_value,
               increment_by, cycle, cache_size
        FROM pg_sequences WHERE schemaname = current_schema() ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()
        ORDER BY 1""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), pg_get_functiondef(oid)
        FROM pg_proc
        WHERE pronamespace = current_schema()::regnamespace AND prokind IN ('f', 'p')
        ORDER BY 1, 2""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal
        ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               t.typdefault,
               array(SELECT enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid
                     ORDER BY e.enumsortorder)
        FROM pg_type t
        WHERE t.typnamespace = current_schema()::regnamespace AND t.typtype IN ('e', 'd')
        ORDER BY 1""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text[], cmd, qual, with_check
        FROM pg_policies WHERE schemaname = current_schema() ORDER BY 1, 2""",
    "versions": "SELECT version FROM conveyor_schema ORDER BY version",
}


async def pg_schema(url: str) -> Schema:
    conn = await asyncpg.connect(url)
    try:
        return {
            topic: [tuple(row.values()) for row in await conn.fetch(sql)]
            for topic, sql in PG_CATALOGUE.items()
        }
    finally:
        await conn.close()


async def pg_database(server: PgTestServer, name: str) -> str:
    """An empty database ``name`` on the test server (dropped with the session's, whose
    name it starts with); its URL."""
    admin = await asyncpg.connect(server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PgTestServer(server.admin_url, name).url


async def pg_drop(server: PgTestServer, name: str) -> None:
    admin = await asyncpg.connect(server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_at_version(url: str, k: int) -> None:
    """Migrations 1..k applied and recorded as ``PostgresStore.migrate`` does."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE conveyor_schema "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
            )
            for version, sql in POSTGRES_MIGRATIONS[:k]:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO conveyor_schema (version, applied_at) VALUES ($1, now())",
                    version,
                )
    finally:
        await conn.close()


async def pg_migrated(url: str) -> list[int]:
    store = PostgresStore(url)
    await store.open()
    try:
        applied = await store.migrate()
        assert await store.schema_status() == (len(POSTGRES_MIGRATIONS),) * 2
        return applied
    finally:
        await store.close()


@pytest.fixture(scope="module")
def fresh_pg_schema(pg_server: PgTestServer) -> Iterator[Schema]:
    """The catalogue of a database migrated from nothing by ``PostgresStore.migrate``."""
    name = f"{pg_server.database}_fresh"

    async def build() -> Schema:
        url = await pg_database(pg_server, name)
        latest = len(POSTGRES_MIGRATIONS)
        assert await pg_migrated(url) == list(range(1, latest + 1))
        return await pg_schema(url)

    yield asyncio.run(build())
    asyncio.run(pg_drop(pg_server, name))


@pytest.mark.parametrize("k", earlier_versions(POSTGRES_MIGRATIONS))
async def test_a_postgresql_database_at_an_earlier_version_upgrades_to_the_fresh_schema(
    pg_server: PgTestServer, fresh_pg_schema: Schema, k: int
) -> None:
    latest = len(POSTGRES_MIGRATIONS)
    name = f"{pg_server.database}_v{k}"
    url = await pg_database(pg_server, name)
    try:
        await pg_at_version(url, k)
        store = PostgresStore(url)
        await store.open()
        try:
            assert await store.schema_status() == (k, latest)
        finally:
            await store.close()

        assert await pg_migrated(url) == list(range(k + 1, latest + 1))

        assert_same_schema(await pg_schema(url), fresh_pg_schema)
    finally:
        await pg_drop(pg_server, name)


# -- data the upgrades change ----------------------------------------------------------------
SHARED_KEY_ROWS = [
    # (tenant, caller, key): two callers of tenant t sent key k before keys were per tenant.
    ("t", "user:1", "k"),
    ("t", "key:2", "k"),
    ("t2", "user:1", "k"),
    ("t", "key:2", "other"),
]
"""Requests stored while an Idempotency-Key was per caller."""
KEYS_AFTER = ["k", None, "k", "other"]
"""Their keys once keys are per tenant: the first request of a tenant's key keeps it."""


def _version_of(migrations: list[tuple[int, str]], name: str) -> int:
    (version,) = [v for v, sql in migrations if name in sql]
    return version


PER_TENANT_INDEX = "ON conveyor_requests (tenant_id, idempotency_key)"


async def test_a_sqlite_tenants_key_shared_by_two_callers_stays_with_its_first_request(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    sqlite_at_version(path, _version_of(SQLITE_MIGRATIONS, PER_TENANT_INDEX) - 1)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executemany(
            "INSERT INTO conveyor_requests (tenant_id, caller_id, kind, input, job_id, "
            "idempotency_key, created_at) VALUES (?, ?, 'test.noop', '{}', 1, ?, 0)",
            SHARED_KEY_ROWS,
        )
    finally:
        conn.close()
    await sqlite_migrated(path)
    conn = sqlite3.connect(path)
    try:
        keys = conn.execute("SELECT idempotency_key FROM conveyor_requests ORDER BY id")
        assert [key for (key,) in keys] == KEYS_AFTER
    finally:
        conn.close()


async def test_a_postgresql_tenants_key_shared_by_two_callers_stays_with_its_first_request(
    pg_server: PgTestServer,
) -> None:
    name = f"{pg_server.database}_shared_key"
    url = await pg_database(pg_server, name)
    try:
        await pg_at_version(url, _version_of(POSTGRES_MIGRATIONS, PER_TENANT_INDEX) - 1)
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO conveyor_requests (tenant_id, caller_id, kind, input, job_id, "
                "idempotency_key, created_at) VALUES ($1, $2, 'test.noop', '{}', 1, $3, now())",
                SHARED_KEY_ROWS,
            )
            await pg_migrated(url)
            keys = await conn.fetch("SELECT idempotency_key FROM conveyor_requests ORDER BY id")
            assert [key for (key,) in keys] == KEYS_AFTER
        finally:
            await conn.close()
    finally:
        await pg_drop(pg_server, name)
