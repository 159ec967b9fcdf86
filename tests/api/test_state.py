"""An app that owns its store connects at start-up, and when the database is not there
yet it serves 503 and keeps trying until it is: nothing broken is remembered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from api_support import api_settings, serving

import conveyor
from conveyor.api import create_app
from conveyor.api.state import StatsCache
from conveyor.engine.client import Client
from conveyor.store.base import StoreError
from pg_server import PgTestServer


async def _until(http: httpx.AsyncClient, path: str, status: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (response := await http.get(path)).status_code != status:
        assert time.monotonic() < deadline, f"{path} still answers {response.status_code}"
        await asyncio.sleep(0.05)


async def test_an_app_with_its_own_store_serves_and_closes_it(
    kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(api_settings(tmp_path), kinds=kinds)
    async with serving(app) as http:
        response = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert response.status_code == 202
        assert (await http.get("/ready")).status_code == 200
    assert (tmp_path / "api.db").exists()


async def test_sqlite_recovers_when_its_folder_appears(
    kinds: conveyor.Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    settings = api_settings(tmp_path, database_url=f"sqlite:///{folder}/api.db")
    async with serving(create_app(settings, kinds=kinds)) as http:
        down = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "5"
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/health")).json()["status"] == "degraded"
        folder.mkdir()
        await _until(http, "/ready", 200)
        up = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert up.status_code == 202


async def test_postgresql_recovers_when_its_database_appears(
    kinds: conveyor.Registry, tmp_path: Path, pg_server: PgTestServer
) -> None:
    name = f"{pg_server.database}_late"
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    settings = api_settings(tmp_path, database_url=url)
    async with serving(create_app(settings, kinds=kinds)) as http:
        assert (await http.get("/v1/requests")).status_code == 503
        assert (await http.get("/ready")).status_code == 503
        conn = await asyncpg.connect(pg_server.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        # The app migrates the new database itself.
        await _until(http, "/ready", 200)
        up = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert up.status_code == 202


async def test_the_stats_cache_queries_once_per_ttl() -> None:
    calls = 0

    class Counting:
        async def queues(self) -> list[object]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return []

    client: Client = Counting()  # type: ignore[assignment]
    cache = StatsCache(ttl=60)
    await asyncio.gather(*(cache.get(client) for _ in range(10)))
    assert calls == 1
    await cache.get(client, fresh=True)
    assert calls == 2
    cache.invalidate()
    await cache.get(client)
    assert calls == 3


def test_an_unknown_database_scheme_fails_at_creation(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported scheme"):
        create_app(api_settings(tmp_path, database_url="mysql://x/y"))
