"""Fixtures of the accounts suite: an :class:`Accounts` over a real store of each kind
(``store`` from tests/conftest.py: SQLite in ``tmp_path``, the session's PostgreSQL
emptied), cheap argon2 parameters, and a reader of the raw tables to check what is
stored.

PostgreSQL: the store acts as its login role (``role="none"``, the default), as the CLI
and the workers do; the API's role is the row-security suite's concern
(tests/store/test_row_security.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor.accounts import Accounts, Principal
from conveyor.accounts.sessions import Session
from conveyor.config import Settings
from conveyor.store.base import Store
from pg_server import PgTestServer

FAST_HASHING: dict[str, Any] = {
    "password_time_cost": 1,
    "password_memory_kib": 64,
    "password_parallelism": 1,
}
"""argon2id at its cheapest: the suite hashes hundreds of passwords."""
PASSWORD = "correct horse battery"


def account_settings(**overrides: Any) -> Settings:
    """Settings with cheap hashing, plus ``overrides``. Lifetimes below the settings'
    floors (a test waiting out an expiry) go through ``model_copy``, unvalidated."""
    settings = Settings(**FAST_HASHING)
    return settings.model_copy(update=overrides)


async def started(store: Store, settings: Settings) -> Accounts:
    accounts = Accounts(store, settings)
    await accounts.start()
    return accounts


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


RawRows = Callable[[str], Awaitable[str]]


@pytest.fixture
async def raw_rows(
    store: Store, store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RawRows]:
    """``await raw_rows(table)``: every row of the table as one text, read behind the
    store's back."""
    if store_kind == "postgresql":
        server: PgTestServer = request.getfixturevalue("pg_server")
        conn = await asyncpg.connect(server.url)

        async def read_pg(table: str) -> str:
            return repr([tuple(r.values()) for r in await conn.fetch(f"SELECT * FROM {table}")])

        yield read_pg
        await conn.close()
    else:

        async def read_sqlite(table: str) -> str:
            db = sqlite3.connect(tmp_path / "t.db")
            try:
                return repr(db.execute(f"SELECT * FROM {table}").fetchall())
            finally:
                db.close()

        yield read_sqlite
