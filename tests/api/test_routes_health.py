"""``/health`` (the seed's shape) and ``/ready``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from api_support import api_settings, serving, submit

import conveyor
from conveyor.api import create_app
from conveyor.store.base import Store


async def test_health_has_the_seeds_shape(http: httpx.AsyncClient) -> None:
    await submit(http, "video.process", {"video_url": "https://v.example/1", "company_name": "a"})
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    datetime.fromisoformat(body["timestamp"])
    memory = body["health"]["memory"]
    assert memory["rss"] > 0
    assert 0 < memory["heapUsed"] <= memory["rss"]
    assert memory["thresholdMB"] is None  # the test settings disable the memory limit
    assert body["health"]["queues"]["video"] == {
        "waiting": 1,
        "activeJobs": 0,
        "scheduled": 0,
        "paused": False,
    }
    assert body["health"]["database"] == "ok"


async def test_ready_when_the_database_answers_and_is_current(http: httpx.AsyncClient) -> None:
    response = await http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["schema_version"] == body["latest_schema_version"] >= 1


class _BehindStore:
    """A store whose schema is one migration behind the code."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def schema_status(self) -> tuple[int, int]:
        applied, latest = await self._store.schema_status()
        return applied - 1, latest


async def test_not_ready_while_migrations_are_pending(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    behind: Any = _BehindStore(store)
    app = create_app(api_settings(tmp_path), store=behind, kinds=kinds)
    async with serving(app) as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "conveyor migrate" in response.json()["detail"]


async def test_health_degrades_and_ready_fails_when_the_database_is_gone(
    http: httpx.AsyncClient, store: Store
) -> None:
    await store.close()
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["health"]["database"] == "unreachable"
    ready = await http.get("/ready")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == "5"
    assert ready.json()["detail"] == "the database is unreachable"
