"""PostgreSQL row security (migrations 0009 and 0011), in raw SQL as the API's role: what a
statement that forgot its tenant would see and change, on the jobs and requests and on the
accounts tables, what the functions made for the look-ups before a tenant is known return,
and the API store that runs as the role."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from conveyor.store.accounts import NewApiKey, NewRefreshToken, Role, SigningKey
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
    secured = [*TENANT_TABLES, *ACCOUNT_TENANT_TABLES, "conveyor_users", *UNGRANTED_TABLES]
    forced = await conn.fetch(
        "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
        secured,
    )
    assert all(r["relrowsecurity"] for r in forced)
    assert len(forced) == len(secured)


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


# -- the accounts tables (migration 0011) ----------------------------------------------------
ACCOUNT_TENANT_TABLES = (
    "conveyor_tenants",
    "conveyor_memberships",
    "conveyor_invitations",
    "conveyor_api_keys",
)
"""Tenant-owned accounts tables: each row names its tenant (a tenant's own row by ``id``)."""
UNGRANTED_TABLES = ("conveyor_refresh_tokens", "conveyor_signing_keys")
"""What the API's role reaches only through the functions of migration 0011."""


@dataclass(frozen=True)
class Accounts:
    """What tenants A and B hold: an owner each, an invitation, an API key, a refresh
    token; and one signing key."""

    owner: dict[str, str]
    invitation_hash: dict[str, str]
    key_prefix: dict[str, str]
    refresh_hash: dict[str, str]


@pytest.fixture
async def accounts(url: str) -> AsyncIterator[Accounts]:
    store = PostgresStore(url)
    await store.open()
    made = Accounts({}, {}, {}, {})
    try:
        for tenant in (A, B):
            _, user = await store.signup(
                tenant, tenant, f"usr_{tenant}", f"owner@{tenant}.example", "argon2-hash"
            )
            made.owner[tenant] = user.id
            made.invitation_hash[tenant] = f"inv-hash-{tenant}"
            await store.create_invitation(
                f"inv_{tenant}",
                tenant,
                f"new@{tenant}.example",
                Role.MEMBER,
                made.invitation_hash[tenant],
                user.id,
                3600,
            )
            made.key_prefix[tenant] = f"pfx{tenant}"
            await store.create_api_key(
                NewApiKey(
                    f"key_{tenant}",
                    tenant,
                    made.key_prefix[tenant],
                    f"secret-hash-{tenant}",
                    "ci",
                    ("requests:read",),
                    user.id,
                    None,
                )
            )
            made.refresh_hash[tenant] = f"rft-hash-{tenant}"
            await store.add_refresh_token(
                NewRefreshToken(
                    f"rft_{tenant}", f"fam_{tenant}", user.id, tenant, made.refresh_hash[tenant], 60
                )
            )
        await store.ensure_signing_key(SigningKey("sk_1", "EdDSA", "private", "public", 0, None))
        yield made
    finally:
        await store.close()
        cleanup = await asyncpg.connect(url)
        try:
            await cleanup.execute(
                "TRUNCATE conveyor_tenants, conveyor_users, conveyor_signing_keys CASCADE"
            )
        finally:
            await cleanup.close()


async def test_with_no_tenant_set_no_accounts_row_is_visible(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    async with conn.transaction():
        await _as_api(conn, None)
        for table in ACCOUNT_TENANT_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # Users: only those who are members of the tenant set (none here).
        assert await conn.fetchval("SELECT count(id) FROM conveyor_users") == 0
    for table in ACCOUNT_TENANT_TABLES:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2, table


async def test_with_a_tenant_set_the_other_tenants_accounts_are_out_of_reach(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    async with conn.transaction():
        await _as_api(conn, A)
        assert await conn.fetch("SELECT id FROM conveyor_tenants") == [(A,)]
        for table in ACCOUNT_TENANT_TABLES[1:]:
            assert await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}") == [(A,)], table
        assert await conn.fetch("SELECT id, email FROM conveyor_users") == [
            (accounts.owner[A], f"owner@{A}.example")
        ]
        changes = {
            "UPDATE conveyor_tenants SET disabled = true WHERE id = $1": "UPDATE 0",
            "UPDATE conveyor_memberships SET role = 'viewer' WHERE tenant_id = $1": "UPDATE 0",
            "UPDATE conveyor_invitations SET revoked = true WHERE tenant_id = $1": "UPDATE 0",
            "UPDATE conveyor_api_keys SET revoked_at = now() WHERE tenant_id = $1": "UPDATE 0",
            "DELETE FROM conveyor_memberships WHERE tenant_id = $1": "DELETE 0",
        }
        for statement, status in changes.items():
            assert await conn.execute(statement, B) == status, statement
    refused = [
        # What no accounts verb does: refused outright, whoever's the row.
        ("DELETE FROM conveyor_api_keys WHERE tenant_id = $1", "permission denied"),
        ("DELETE FROM conveyor_invitations WHERE tenant_id = $1", "permission denied"),
        ("UPDATE conveyor_api_keys SET tenant_id = $1", "permission denied"),
        ("SELECT password_hash FROM conveyor_users WHERE $1 <> ''", "permission denied"),
        (
            "INSERT INTO conveyor_memberships (tenant_id, user_id, role, created_at) "
            "VALUES ($1, 'usr_tenant-a', 'owner', now())",
            "row-level security",
        ),
        (
            "INSERT INTO conveyor_api_keys (id, tenant_id, prefix, secret_hash, name, scopes, "
            "created_at) VALUES ('key_x', $1, 'x', 'x', 'x', '[]', now())",
            "row-level security",
        ),
    ]
    for statement, message in refused:
        async with conn.transaction():
            await _as_api(conn, A)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=message):
                await conn.execute(statement, B)
    assert await conn.fetchval("SELECT count(*) FROM conveyor_memberships") == 2


@pytest.mark.parametrize("tenant", [None, A])
async def test_refresh_tokens_and_signing_keys_are_not_granted_to_the_api(
    conn: asyncpg.Connection, accounts: Accounts, tenant: str | None
) -> None:
    for table in UNGRANTED_TABLES:
        async with conn.transaction():
            await _as_api(conn, tenant)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch(f"SELECT * FROM {table}")


async def test_secrets_of_every_row_are_not_read_in_a_tenants_scope(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    for function in ("conveyor_signing_keys", "conveyor_list_users"):
        async with conn.transaction():
            await _as_api(conn, A)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="scope of tenant"):
                await conn.fetch(f"SELECT * FROM {function}()")
        async with conn.transaction():
            await _as_api(conn, None)
            assert len(await conn.fetch(f"SELECT * FROM {function}()")) >= 1


async def test_the_functions_before_a_tenant_is_known_return_the_one_matching_row(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    async with conn.transaction():
        await _as_api(conn, None)
        found = await conn.fetch(
            "SELECT tenant_id FROM conveyor_api_key_by_prefix($1)", accounts.key_prefix[B]
        )
        assert found == [(B,)]
        found = await conn.fetch(
            "SELECT tenant_id FROM conveyor_invitation_by_token($1)", accounts.invitation_hash[B]
        )
        assert found == [(B,)]
        found = await conn.fetch(
            "SELECT tenant_id FROM conveyor_lock_refresh_token($1)", accounts.refresh_hash[B]
        )
        assert found == [(B,)]
        found = await conn.fetch("SELECT id FROM conveyor_user_by_email($1)", f"owner@{B}.example")
        assert found == [(accounts.owner[B],)]
        found = await conn.fetch(
            "SELECT tenant_id FROM conveyor_user_memberships($1)", accounts.owner[B]
        )
        assert found == [(B,)]
        for function in (
            "conveyor_api_key_by_prefix",
            "conveyor_invitation_by_token",
            "conveyor_lock_refresh_token",
            "conveyor_user_by_email",
        ):
            # Nothing matches a prefix of the key, nor a pattern.
            for probe in ("pfx", "%", ""):
                assert await conn.fetch(f"SELECT * FROM {function}($1)", probe) == [], function


async def test_the_key_look_up_of_one_statement_takes_the_api_role_for_that_statement_only(
    url: str, accounts: Accounts
) -> None:
    # Migration 0012: a NOINHERIT login role of the API has no right of its own, so the
    # look-up finds a key only by taking conveyor_api, and leaves nothing set behind it.
    name = f"conveyor_api_login_{secrets.token_hex(3)}"
    worker = f"conveyor_worker_login_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE ROLE {name} LOGIN NOINHERIT IN ROLE conveyor_api")
    await admin.execute(f"CREATE ROLE {worker} LOGIN IN ROLE conveyor_worker")
    parts = urlsplit(url)
    login = await asyncpg.connect(
        urlunsplit(parts._replace(netloc=f"{name}@{parts.hostname}:{parts.port}"))
    )
    as_worker = await asyncpg.connect(
        urlunsplit(parts._replace(netloc=f"{worker}@{parts.hostname}:{parts.port}"))
    )
    look_up = "SELECT tenant_id FROM conveyor_api_key_by_prefix_as($1, $2)"
    settings = (
        "SELECT current_user::text, current_setting('conveyor.tenant_id', true), "
        "       current_setting('conveyor.operator', true)"
    )
    try:
        assert await login.fetch(look_up, "conveyor_api", accounts.key_prefix[B]) == [(B,)]
        for probe in ("pfx", "%", ""):
            assert await login.fetch(look_up, "conveyor_api", probe) == []
        user, tenant, operator = await login.fetchrow(settings)
        assert (user, tenant or "", operator or "") == (name, "", "")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await login.fetch("SELECT * FROM conveyor_api_key_by_prefix($1)", "pfx")
        # It takes no role its caller may not take (PostgreSQL asks whether the session's
        # login role may, as for SET ROLE).
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="set role"):
            await login.fetch(look_up, "conveyor_worker", accounts.key_prefix[B])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="set role"):
            await as_worker.fetch(look_up, "conveyor_api", accounts.key_prefix[B])
        # Inside a transaction of tenant A's, it drops the tenant: the rest of that
        # transaction sees no tenant's rows, rather than A's.
        async with login.transaction():
            await _as_api(login, A)
            assert await login.fetchval("SELECT count(*) FROM conveyor_api_keys") == 1
            assert await login.fetch(look_up, "conveyor_api", accounts.key_prefix[B]) == [(B,)]
            assert await login.fetchval("SELECT count(*) FROM conveyor_api_keys") == 0
        row = await admin.fetchrow(
            "SELECT prosecdef, proconfig FROM pg_proc "
            "WHERE oid = 'conveyor_api_key_by_prefix_as(text, text)'::regprocedure"
        )
        assert not row["prosecdef"]
        schema = await admin.fetchval("SELECT current_schema()")
        assert f"search_path=pg_catalog, {schema}, pg_temp" in row["proconfig"]
    finally:
        await login.close()
        await as_worker.close()
        await admin.execute(f"DROP ROLE {name}, {worker}")
        await admin.close()


async def test_the_accounts_functions_are_the_api_roles_alone_with_a_pinned_search_path(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    rows = await conn.fetch(
        "SELECT p.oid::regprocedure::text AS fn, p.proconfig, "
        "       has_function_privilege('conveyor_api', p.oid, 'EXECUTE') AS api, "
        "       has_function_privilege('conveyor_worker', p.oid, 'EXECUTE') AS worker, "
        "       EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public "
        "FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef"
    )
    # The 19 of the accounts (0011) and the email unsubscribe of 0014.
    assert len(rows) == 20
    assert "conveyor_email_unsubscribe(text)" in {row["fn"] for row in rows}
    for row in rows:
        assert row["api"], row["fn"]
        assert not row["worker"], row["fn"]
        assert not row["public"], row["fn"]
        assert [c for c in row["proconfig"] if c.startswith("search_path=")] == [
            f"search_path=pg_catalog, {await conn.fetchval('SELECT current_schema()')}, pg_temp"
        ], row["fn"]


async def test_the_worker_role_reaches_no_accounts_table(
    conn: asyncpg.Connection, accounts: Accounts
) -> None:
    for table in (*ACCOUNT_TENANT_TABLES, "conveyor_users", *UNGRANTED_TABLES):
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE conveyor_worker")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch(f"SELECT * FROM {table}")
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE conveyor_worker")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.fetch("SELECT * FROM conveyor_api_key_by_prefix('x')")


async def test_the_api_store_runs_the_accounts_verbs_within_the_tenant(
    conn: asyncpg.Connection, accounts: Accounts, url: str
) -> None:
    store = PostgresStore(url, role="auto")
    await store.open()
    try:
        assert store.role == "conveyor_api"
        assert [m.user_id for m in await store.list_members(A)] == [accounts.owner[A]]
        assert await store.get_role(A, accounts.owner[B]) is None
        assert not await store.revoke_api_key(f"key_{B}", A)
        assert not await store.revoke_invitation(A, f"inv_{B}")
        assert [k.tenant_id for k in await store.list_api_keys(None)] == [B, A]
        found = await store.find_api_key(accounts.key_prefix[B])
        assert found is not None
        assert found.tenant_id == B
    finally:
        await store.close()
    assert (
        await conn.fetchval("SELECT count(*) FROM conveyor_api_keys WHERE revoked_at IS NULL") == 2
    )


async def test_every_accounts_verb_works_for_an_api_login_role_with_no_rights_of_its_own(
    url: str, accounts: Accounts
) -> None:
    # docs/operations.md's NOINHERIT login role: a verb that did not take conveyor_api
    # would be refused outright, so each one passing shows it ran as the API's role.
    name = f"conveyor_api_login_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE ROLE {name} LOGIN NOINHERIT IN ROLE conveyor_api")
    try:
        parts = urlsplit(url)
        login_url = urlunsplit(parts._replace(netloc=f"{name}@{parts.hostname}:{parts.port}"))
        store = PostgresStore(login_url, role="auto")
        await store.open()
        try:
            assert store.role == "conveyor_api"
            tenant, user = await store.signup("tenant-c", "C", "usr_c", "c@c.example", "hash")
            assert await store.get_user_by_email("c@c.example") == user
            assert [m.tenant_id for m in await store.memberships(user.id)] == [tenant.id]
            assert await store.get_tenant(tenant.id) == tenant
            assert await store.set_password_hash(user.id, "rehash")
            await store.add_refresh_token(
                NewRefreshToken("rft_c", "fam_c", user.id, tenant.id, "rft-hash-c", 60)
            )
            new = NewRefreshToken("rft_c2", "", "", None, "rft-hash-c2", 60)
            assert (await store.rotate_refresh_token("rft-hash-c", new)).outcome.value == (
                "rotated"
            )
            key = await store.create_api_key(
                NewApiKey("key_c", tenant.id, "pfxc", "h", "ci", ("admin",), user.id, None)
            )
            assert await store.find_api_key("pfxc") == key
            await store.touch_api_key(key.id)
            assert len(await store.list_api_keys(None)) == 3
            await store.create_invitation(
                "inv_c", tenant.id, "d@c.example", Role.ADMIN, "inv-hash-c", user.id, 60
            )
            assert await store.find_invitation("inv-hash-c") is not None
            invited = await store.create_user("usr_d", "d@c.example", "hash")
            member = await store.accept_invitation("inv-hash-c", invited.id)
            assert member is not None
            assert member.role is Role.ADMIN
            assert [m.user_id for m in await store.list_members(tenant.id)] == ["usr_c", "usr_d"]
            assert await store.set_role(tenant.id, invited.id, Role.VIEWER) is not None
            assert await store.revoke_user_tokens(user.id, tenant.id) == 2  # rotated and new
            assert await store.remove_member(tenant.id, invited.id)
            assert await store.set_user_disabled(invited.id, True)
            assert len(await store.list_users()) == 4
            assert len(await store.list_tenants()) == 3
            assert await store.revoke_refresh_token("rft-hash-c2")
            assert await store.revoke_api_key(key.id, tenant.id)
            keys = await store.add_signing_key(SigningKey("sk_2", "EdDSA", "p", "q", 0, None))
            assert [k.kid for k in keys] == ["sk_2", "sk_1"]
            assert await store.retire_signing_key("sk_2")
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP ROLE {name}")
        await admin.close()
