"""An app that owns its store connects at start-up, and when the database is not there
yet it serves 503 and keeps trying until it is: nothing broken is remembered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from api_support import api_key, api_settings, bearer, serving

import conveyor
from conveyor.api import create_app
from conveyor.api.state import StatsCache
from conveyor.engine.client import Client
from conveyor.store.base import StoreError
from conveyor.store.records import QueueStats
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
    async with serving(app, auth=True) as http:
        response = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert response.status_code == 202
        assert (await http.get("/ready")).status_code == 200
    assert (tmp_path / "api.db").exists()


async def test_sqlite_recovers_when_its_folder_appears(
    kinds: conveyor.Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    settings = api_settings(tmp_path, database_url=f"sqlite:///{folder}/api.db")
    app = create_app(settings, kinds=kinds)
    async with serving(app) as http:
        # A credential cannot be checked without the database: 503, not 401.
        http.headers["Authorization"] = bearer("cvk_notcheckable_yet")
        down = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "5"
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/health")).json()["status"] == "degraded"
        folder.mkdir()
        await _until(http, "/ready", 200)
        # Ready means the accounts service has started too: a credential is checked.
        assert app.state.accounts is not None
        http.headers["Authorization"] = bearer(await api_key(app))
        up = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert up.status_code == 202


async def test_postgresql_recovers_when_its_database_appears(
    kinds: conveyor.Registry, tmp_path: Path, pg_server: PgTestServer
) -> None:
    name = f"{pg_server.database}_late"
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    settings = api_settings(tmp_path, database_url=url)
    app = create_app(settings, kinds=kinds)
    async with serving(app) as http:
        http.headers["Authorization"] = bearer("cvk_notcheckable_yet")
        assert (await http.get("/v1/requests")).status_code == 503
        assert (await http.get("/ready")).status_code == 503
        conn = await asyncpg.connect(pg_server.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        # The app migrates the new database itself.
        await _until(http, "/ready", 200)
        # Ready means the accounts service has started too: a credential is checked.
        assert app.state.accounts is not None
        http.headers["Authorization"] = bearer(await api_key(app))
        up = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert up.status_code == 202


class FakeStats:
    """A client whose statistics queries are counted, and held while ``gate`` is clear."""

    def __init__(self) -> None:
        self.light = 0
        self.full = 0
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.store = self

    def _stats(self, n: int) -> list[QueueStats]:
        return [QueueStats("default", False, {}, 0, 0, None, None, None, n, 0, None, None)]

    async def queue_stats(self, finished: bool = True) -> list[QueueStats]:
        assert not finished, "the cache reads only the active side"
        self.light += 1
        await self.gate.wait()
        if self.fail:
            raise StoreError("down")
        return self._stats(self.light)

    async def queues(self) -> list[QueueStats]:
        self.full += 1
        return self._stats(-self.full)


def _seen(stats: dict[str, QueueStats]) -> int:
    return stats["default"].completed_last_minute


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_reads_share_one_query() -> None:
    fake = FakeStats()
    client: Client = fake  # type: ignore[assignment]
    cache = StatsCache(ttl=60)
    results = await asyncio.gather(*(cache.get(client) for _ in range(10)))
    assert fake.light == 1
    assert {_seen(r) for r in results} == {1}
    assert _seen(await cache.get(client)) == 1
    assert fake.light == 1


async def test_stale_statistics_are_served_while_one_refresh_runs_behind() -> None:
    fake = FakeStats()
    client: Client = fake  # type: ignore[assignment]
    cache = StatsCache(ttl=0.05)
    await cache.get(client)
    await asyncio.sleep(0.06)
    fake.gate.clear()  # the refresh hangs: no read may wait for it
    async with asyncio.timeout(1):
        stale = await asyncio.gather(*(cache.get(client) for _ in range(10)))
    assert {_seen(r) for r in stale} == {1}
    assert fake.light == 2
    fake.gate.set()
    await _settle()
    assert _seen(await cache.get(client)) == 2


async def test_a_failed_refresh_keeps_the_old_value_and_is_retried_a_ttl_later() -> None:
    fake = FakeStats()
    client: Client = fake  # type: ignore[assignment]
    cache = StatsCache(ttl=0.05)
    await cache.get(client)
    fake.fail = True
    await asyncio.sleep(0.06)
    assert _seen(await cache.get(client)) == 1
    await _settle()
    assert fake.light == 2
    assert _seen(await cache.get(client)) == 1
    await _settle()
    assert fake.light == 2  # not again before the ttl
    fake.fail = False
    await asyncio.sleep(0.06)
    await cache.get(client)
    await _settle()
    assert _seen(await cache.get(client)) == 3


async def test_the_first_read_fails_when_the_database_does() -> None:
    fake = FakeStats()
    fake.fail = True
    client: Client = fake  # type: ignore[assignment]
    cache = StatsCache(ttl=60)
    with pytest.raises(StoreError):
        await cache.get(client)
    fake.fail = False
    assert _seen(await cache.get(client)) == 2


async def test_fresh_and_current_reads_query_now() -> None:
    fake = FakeStats()
    client: Client = fake  # type: ignore[assignment]
    cache = StatsCache(ttl=60)
    await cache.get(client)
    assert _seen(await cache.get(client, fresh=True)) == -1
    assert fake.full == 1
    assert _seen(await cache.current(client)) == 2
    assert _seen(await cache.get(client)) == 2
    cache.invalidate()
    assert _seen(await cache.get(client)) == 2  # served while the refresh runs
    await _settle()
    assert fake.light == 3
    assert _seen(await cache.get(client)) == 3


def test_an_unknown_database_scheme_fails_at_creation(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported scheme"):
        create_app(api_settings(tmp_path, database_url="mysql://x/y"))
