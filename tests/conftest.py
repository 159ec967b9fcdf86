"""Shared fixtures: a fresh store of every kind, and a factory of new jobs.

Every store kind the contract suite runs against is listed in :data:`STORE_KINDS` and
built by :func:`make_test_store`.

PostgreSQL: the session creates a database of its own (``conveyor_test_<random>``) on the
server named by ``CONVEYOR_TEST_POSTGRES_URL`` (default: the local server as ``postgres``),
empties its tables before each test and drops it at the end. Where no server answers, the
setup tries to start the local cluster; if that fails too, PostgreSQL tests fail with a
message, or are skipped where ``CONVEYOR_TEST_SKIP_SERVICES`` lists ``postgresql`` (see
``missing_service.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import missing_service
from conveyor.store.base import Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import NewJob
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

STORE_KINDS = ["sqlite", "postgresql"]
"""Every store kind the contract suite runs against."""

_PG: PgTestServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    missing_service.opted_out()  # a misspelt opt-out is refused before any test runs


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgTestServer]:
    """The session's PostgreSQL database (created now, dropped at the end)."""
    global _PG
    server = PgTestServer.find_or_start()
    _PG = server
    try:
        yield server
    finally:
        _PG = None
        server.drop()


@pytest.fixture
async def db(pg_server: PgTestServer) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the session's PostgreSQL database, to read and write the
    tables behind the stores' backs."""
    conn = await asyncpg.connect(pg_server.url)
    try:
        yield conn
    finally:
        await conn.close()


NewJobFactory = Callable[..., NewJob]


@asynccontextmanager
async def make_test_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, migrated store of ``kind``, closed on exit.

    The database is named by ``tmp_path``: a second call with the same ``tmp_path`` opens
    another store instance (its own connections) on the same database, as a second process
    would.
    """
    store: Store
    if kind == "sqlite":
        store = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    elif kind == "postgresql":
        if _PG is None:
            raise RuntimeError("the pg_server fixture must run before a postgresql store")
        store = PostgresStore(_PG.url)
    else:
        raise ValueError(f"unknown store kind {kind!r}")
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgresql":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    return kind


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store for one test (PostgreSQL: the session database, emptied)."""
    async with make_test_store(store_kind, tmp_path) as opened:
        yield opened


@pytest.fixture
async def peer_store(store: Store, store_kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A second store instance on the same database as ``store`` (another process's view)."""
    async with make_test_store(store_kind, tmp_path) as opened:
        yield opened


def _new_job(**overrides: Any) -> NewJob:
    fields: dict[str, Any] = {
        "kind": "test.noop",
        "queue": "default",
        "payload": {},
        "priority": 2,
        "max_attempts": 3,
        "timeout_s": None,
    }
    fields.update(overrides)
    return NewJob(**fields)


@pytest.fixture
def new_job() -> NewJobFactory:
    """``new_job(**overrides) -> NewJob`` with defaults: kind ``test.noop``, queue
    ``default``, payload ``{}``, priority 2, max_attempts 3, no timeout."""
    return _new_job
