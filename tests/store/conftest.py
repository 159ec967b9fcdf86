"""Fixtures of the PostgreSQL store tests: the test server emptied, stores opened on it
(each standing for a process of its own); the plain connection ``db`` is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conveyor.store.postgres import PostgresStore
from pg_server import PgTestServer

StoreFactory = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
def pg(pg_server: PgTestServer) -> PgTestServer:
    pg_server.empty()
    return pg_server


@pytest.fixture
async def stores(pg: PgTestServer) -> AsyncIterator[StoreFactory]:
    """Opens migrated stores on the emptied server; closes them after the test."""
    opened: list[PostgresStore] = []

    async def make(*, listen: bool = True, events: bool = True) -> PostgresStore:
        store = PostgresStore(pg.url, listen=listen, events=events)
        await store.open()
        await store.migrate()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
