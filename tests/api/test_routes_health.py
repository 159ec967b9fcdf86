"""``/health`` (the seed's shape) and ``/ready``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import FAST_WORKER, api_settings, serving, submit

import conveyor
from conveyor.api import create_app
from conveyor.store.base import Store
from conveyor.store.records import NewJob, WorkerInfo


def _new_job(queue: str, delay_s: float = 0.0) -> NewJob:
    return NewJob(
        kind="video.process",
        queue=queue,
        payload={},
        priority=2,
        max_attempts=1,
        timeout_s=None,
        delay_s=delay_s,
    )


async def test_health_has_the_seeds_shape(http: httpx.AsyncClient, store: Store) -> None:
    await submit(http, "video.process", {"video_url": "https://v.example/1", "company_name": "a"})
    await submit(
        http,
        "video.process",
        {"video_url": "https://v.example/2", "company_name": "a"},
    )
    [later] = await store.enqueue([_new_job("video", delay_s=3600)])
    await store.register_worker(WorkerInfo("w1", "host", 1, {"video": 2}, memory_mb=120.5), 30)
    await store.register_worker(WorkerInfo("w2", "host", 2, {"qa": 2}, memory_mb=80.0), 30)
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    datetime.fromisoformat(body["timestamp"])
    node = body["health"]["memory"]["node"]
    assert node["rss"] > 0
    assert 0 < node["heapUsed"] <= node["rss"]
    assert node["thresholdMB"] is None  # the test settings disable the memory limit
    python = body["health"]["memory"]["python"]
    assert (python["memory_mb"], python["status"]) == (120.5, "ok")
    assert {w["id"]: w["memory_mb"] for w in python["workers"]} == {"w1": 120.5, "w2": 80.0}
    # The seed's keys, and Conveyor's own beside them: waiting counts scheduled jobs too.
    assert body["health"]["queues"]["video"] == {
        "waiting": 3,
        "activeJobs": 0,
        "due": 2,
        "scheduled": 1,
        "paused": False,
    }
    assert later.created
    assert body["health"]["database"] == "ok"


async def test_health_reports_a_worker_above_the_memory_limit(
    app_client: Any, store: Store
) -> None:
    await store.register_worker(WorkerInfo("w1", "host", 1, {"video": 2}, memory_mb=900.0), 30)
    async with app_client(max_memory_mb=100_000) as http:
        ok = (await http.get("/health")).json()
    async with app_client(max_memory_mb=500) as http:
        high = (await http.get("/health")).json()
    assert ok["health"]["memory"]["python"]["status"] == "ok"
    assert high["health"]["memory"]["python"] == {
        "memory_mb": 900.0,
        "status": "high",
        "workers": [{"id": "w1", "memory_mb": 900.0}],
    }
    assert high["status"] == "degraded"


async def test_health_without_workers_says_unknown(http: httpx.AsyncClient) -> None:
    python = (await http.get("/health")).json()["health"]["memory"]["python"]
    assert python == {"memory_mb": None, "status": "unknown", "workers": []}


async def test_a_running_worker_reports_its_memory(
    http: httpx.AsyncClient, store: Store, kinds: conveyor.Registry
) -> None:
    worker = conveyor.Worker(
        store, conveyor.WorkerConfig(queues={"default": 1}, **FAST_WORKER), kinds=kinds
    )
    started = worker.signals.enable().idle.wait()
    task = asyncio.create_task(worker.run())
    try:
        await started  # registered, with its memory, before its first pass
        python = (await http.get("/health")).json()["health"]["memory"]["python"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    [entry] = python["workers"]
    assert entry["id"] == worker.id
    assert 1 < entry["memory_mb"] < 100_000
    assert python["memory_mb"] == entry["memory_mb"]


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_head_on_a_probe_answers_its_status_without_a_body(
    http: httpx.AsyncClient, path: str
) -> None:
    get = await http.get(path)
    head = await http.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


async def test_head_on_ready_is_503_while_the_database_is_gone(
    http: httpx.AsyncClient, store: Store
) -> None:
    await store.close()
    head = await http.head("/ready")
    assert head.status_code == 503
    assert head.content == b""
    assert head.headers["Retry-After"] == "5"


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
