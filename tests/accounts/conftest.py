"""Fixtures of the accounts suite: an :class:`Accounts` over a real store of each kind,
cheap argon2 parameters (``accounts_support``), and a reader of the raw tables to check
what is stored.

Store kinds: ``sqlite`` (a file in ``tmp_path``); ``postgresql``, the session's database
emptied, the store acting as its login role (as the CLI and the workers do);
``postgresql-api``, the same database with the store the API opens (``role="auto"``: each
call as ``conveyor_api`` under row security), which needs the accounts tables granted to
that role (migration 0011) and is skipped, saying so, on a tree without it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from accounts_support import PASSWORD, RawRows, account_settings, started

import conveyor.store.postgres
from conveyor.accounts import Accounts, Principal, Session
from conveyor.store.base import Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

API_ROLE_MIGRATION = (
    Path(conveyor.store.postgres.__file__).parent / "migrations" / "0011_accounts_security.sql"
)
"""The migration that lets ``conveyor_api`` use the accounts tables."""


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-api"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgresql-api" and not API_ROLE_MIGRATION.is_file():
        pytest.skip("the API's role uses the accounts tables from migration 0011 on")
    if kind.startswith("postgresql"):
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    return kind


@pytest.fixture
def database_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    server: PgTestServer = request.getfixturevalue("pg_server")
    return server.url


async def _open(kind: str, url: str) -> Store:
    if kind == "sqlite":
        store: Store = SqliteStore(url)
        await store.open()
        await store.migrate()
        return store
    # The login role migrates and owns the tables; the API's store only acts.
    owner = PostgresStore(url)
    await owner.open()
    try:
        await owner.migrate()
    finally:
        await owner.close()
    pg = PostgresStore(url, role="auto" if kind == "postgresql-api" else "none")
    await pg.open()
    if kind == "postgresql-api":
        assert pg.role == "conveyor_api", pg.role
    return pg


@pytest.fixture
async def store(store_kind: str, database_url: str) -> AsyncIterator[Store]:
    """A fresh store for one test, of each kind above."""
    opened = await _open(store_kind, database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def peer_store(store: Store, store_kind: str, database_url: str) -> AsyncIterator[Store]:
    """A second store instance on the same database: another process's view."""
    opened = await _open(store_kind, database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def accounts(store: Store) -> Accounts:
    """The service over the test's store, started (a signing key exists)."""
    return await started(store, account_settings())


@pytest.fixture
async def peer_accounts(peer_store: Store) -> Accounts:
    """A second service on the same database: another API process."""
    return await started(peer_store, account_settings())


@pytest.fixture
async def owner(accounts: Accounts) -> Session:
    """A tenant ``Acme`` and its owner ``owner@example.com``, logged in."""
    return await accounts.signup("owner@example.com", PASSWORD, "Acme")


@pytest.fixture
async def owner_principal(accounts: Accounts, owner: Session) -> Principal:
    return await accounts.authenticate(owner.access_token)


@pytest.fixture
async def raw_rows(store_kind: str, database_url: str) -> AsyncIterator[RawRows]:
    """Every row of a table as one text, read behind the store's back."""
    if store_kind == "sqlite":
        path = database_url.removeprefix("sqlite:///")

        async def read_sqlite(table: str) -> str:
            db = sqlite3.connect(path)
            try:
                return repr(db.execute(f"SELECT * FROM {table}").fetchall())
            finally:
                db.close()

        yield read_sqlite
        return
    conn = await asyncpg.connect(database_url)

    async def read_pg(table: str) -> str:
        return repr([tuple(r.values()) for r in await conn.fetch(f"SELECT * FROM {table}")])

    yield read_pg
    await conn.close()
