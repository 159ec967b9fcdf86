"""PostgreSQL row security (migration 0009), in raw SQL as the API's role: what a
statement that forgot its tenant would see and change, and the API store that runs as it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from conveyor.store.postgres import PostgresStore
from conveyor.store.records import NewJob, NewRequest, RequestFilter
from pg_server import PgTestServer

TENANT_TABLES = ("conveyor_jobs", "conveyor_requests")
A = "tenant-a"
B = "tenant-b"


def _request(tenant_id: str) -> NewRequest:
    return NewRequest(
        kind="test.noop",
        input={},
        caller_id="c",
        job=NewJob(
            kind="test.noop",
            queue="default",
            payload={},
            priority=2,
            max_attempts=3,
            timeout_s=None,
            tenant_id=tenant_id,
        ),
        idempotency_key=None,
        http_request_id="r",
    )


@pytest.fixture(scope="module")
def url(pg_server: PgTestServer) -> str:
    return pg_server.create_database()


@pytest.fixture
async def conn(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding one request and job of each of tenants A and B."""
    store = PostgresStore(url)
    await store.open()
    try:
        for tenant in (A, B):
            await store.create_request(_request(tenant))
    finally:
        await store.close()
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        for table in TENANT_TABLES:
            await connection.execute(f"TRUNCATE {table} CASCADE")
        await connection.close()


async def _as_api(conn: asyncpg.Connection, tenant: str | None, operator: bool = False) -> None:
    await conn.execute("SET LOCAL ROLE conveyor_api")
    if tenant is not None:
        await conn.execute("SELECT set_config('conveyor.tenant_id', $1, true)", tenant)
    if operator:
        await conn.execute("SET LOCAL conveyor.operator = 'on'")


async def test_with_no_tenant_set_every_tenant_owned_table_is_empty(
    conn: asyncpg.Connection,
) -> None:
    async with conn.transaction():
        await _as_api(conn, None)
        for table in TENANT_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
    for table in TENANT_TABLES:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2


async def test_with_a_tenant_set_the_other_tenants_rows_are_out_of_reach(
    conn: asyncpg.Connection,
) -> None:
    async with conn.transaction():
        await _as_api(conn, A)
        for table in TENANT_TABLES:
            assert await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}") == [(A,)]
            update = f"UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1"
            assert await conn.execute(update, B) == "UPDATE 0"
    async with conn.transaction():
        await _as_api(conn, A)
        # Deleting is not the API's to do at all (workers prune): refused outright.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute("DELETE FROM conveyor_requests WHERE tenant_id = $1", B)
    async with conn.transaction():
        await _as_api(conn, A)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO conveyor_jobs (tenant_id, queue, kind, payload) "
                "VALUES ($1, 'default', 'x', 'null')",
                B,
            )
    async with conn.transaction():
        await _as_api(conn, A)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute("UPDATE conveyor_jobs SET tenant_id = $1", B)


async def test_the_operator_setting_sees_every_tenant(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await _as_api(conn, None, operator=True)
        for table in TENANT_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2


async def test_the_worker_role_sees_every_tenant(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE conveyor_worker")
        for table in TENANT_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2


async def test_the_api_role_owns_nothing_and_cannot_bypass_row_security(
    conn: asyncpg.Connection,
) -> None:
    role = await conn.fetchrow(
        "SELECT rolcanlogin, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = 'conveyor_api'"
    )
    assert role is not None
    assert tuple(role) == (False, False, False)
    owned = await conn.fetchval(
        "SELECT count(*) FROM pg_class WHERE relowner = 'conveyor_api'::regrole"
    )
    assert owned == 0
    forced = await conn.fetch(
        "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
        list(TENANT_TABLES),
    )
    assert all(r["relrowsecurity"] for r in forced)
    assert len(forced) == len(TENANT_TABLES)


async def test_the_api_store_runs_as_the_api_role_within_the_tenant(
    conn: asyncpg.Connection, url: str
) -> None:
    store = PostgresStore(url, role="auto")
    await store.open()
    try:
        assert store.role == "conveyor_api"
        [theirs] = await store.list_requests(RequestFilter(tenant_id=B))
        assert await store.get_job(theirs.job.id, A) is None
        assert await store.get_job(theirs.job.id) is not None  # an operator
        stored = await store.create_request(_request(A))
        assert stored.queue_position == 1
        assert await store.get_request(stored.request.id, B) is None
    finally:
        await store.close()


async def test_a_named_role_the_login_cannot_use_is_refused_at_open(url: str) -> None:
    store = PostgresStore(url, role="no_such_role")
    with pytest.raises(Exception, match="CONVEYOR_DATABASE_ROLE='no_such_role'"):
        await store.open()
    await store.close()
