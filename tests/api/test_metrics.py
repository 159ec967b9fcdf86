"""GET /metrics: the HTTP latency histogram and the job figures read at scrape time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from conveyor.api.metrics import Metrics, StatsSource
from conveyor.api.middleware import install_middleware
from conveyor.config import Settings
from conveyor.store.records import QueueStats

DEFAULT_QUEUE = QueueStats(
    name="default",
    paused=False,
    counts={"queued": 7, "running": 2, "completed": 40, "failed": 3, "cancelled": 1},
    scheduled=4,
    running=2,
    limit=10,
    cluster_limit=None,
    oldest_queued_age_s=12.5,
    completed_last_minute=9,
    failed_last_minute=1,
    run_time_p50_s=0.25,
    run_time_p95_s=1.5,
)
VIDEO_QUEUE = QueueStats(
    name="video",
    paused=True,
    counts={"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
    scheduled=0,
    running=0,
    limit=None,
    cluster_limit=None,
    oldest_queued_age_s=None,
    completed_last_minute=0,
    failed_last_minute=0,
    run_time_p50_s=None,
    run_time_p95_s=None,
)


async def fake_stats() -> list[QueueStats]:
    return [DEFAULT_QUEUE, VIDEO_QUEUE]


def make_app(stats_source: StatsSource | None = fake_stats, **metrics_kw: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: int) -> dict[str, int]:
        return {"id": job_id}

    @app.post("/v1/requests")
    async def create() -> dict[str, bool]:
        return {"ok": True}

    metrics = Metrics(stats_source=stats_source, **metrics_kw)
    settings = Settings(
        redis_url=None, max_body_bytes=1024, rate_limit_per_ip="5/minute", cors_origins=[]
    )
    install_middleware(app, settings, metrics=metrics)
    app.include_router(metrics.router())
    return app


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    app = make_app()
    yield app
    await app.state.rate_limiter.aclose()


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    for sample in samples(text):
        if sample.name == name and sample.labels == labels:
            return sample.value
    return None


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_http_histogram_by_route_template_and_status(app: FastAPI) -> None:
    async with client_for(app) as client:
        assert (await client.get("/v1/jobs/1")).status_code == 200
        assert (await client.get("/v1/jobs/2")).status_code == 200
        assert (await client.get("/v1/jobs/x")).status_code == 422
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.post("/v1/requests", content=b"x" * 2000)).status_code == 413
        text = await scrape(client)

    name = "conveyor_http_request_duration_seconds"
    ok = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "200"}
    assert value(text, f"{name}_count", **ok) == 2
    assert value(text, f"{name}_bucket", **ok, le="+Inf") == 2
    assert value(text, f"{name}_bucket", **ok, le="0.05") is not None
    sum_ = value(text, f"{name}_sum", **ok)
    assert sum_ is not None
    assert sum_ > 0
    assert value(text, f"{name}_count", method="GET", route="/v1/jobs/{job_id}", status="422")
    assert value(text, f"{name}_count", method="GET", route="<unmatched>", status="404") == 1
    # Refused before routing, still counted (the metrics middleware is outermost).
    assert value(text, f"{name}_count", method="POST", route="<unmatched>", status="413") == 1
    # No raw paths as labels.
    assert "/v1/jobs/1" not in text


async def test_429s_are_counted(app: FastAPI) -> None:
    async with client_for(app) as client:
        statuses = [(await client.get("/v1/jobs/1")).status_code for _ in range(6)]
        text = await scrape(client)
    assert statuses[-1] == 429
    name = "conveyor_http_request_duration_seconds_count"
    assert value(text, name, method="GET", route="<unmatched>", status="429") == 1


async def test_job_metrics_from_the_stats_source(app: FastAPI) -> None:
    async with client_for(app) as client:
        text = await scrape(client)
    assert value(text, "conveyor_queue_stats_up") == 1
    assert value(text, "conveyor_jobs", queue="default", state="queued") == 7
    assert value(text, "conveyor_jobs", queue="default", state="failed") == 3
    assert value(text, "conveyor_jobs", queue="video", state="completed") == 0
    assert value(text, "conveyor_queue_due_jobs", queue="default") == 3
    assert value(text, "conveyor_queue_scheduled_jobs", queue="default") == 4
    assert value(text, "conveyor_queue_oldest_due_age_seconds", queue="default") == 12.5
    assert value(text, "conveyor_queue_oldest_due_age_seconds", queue="video") == 0
    assert value(text, "conveyor_queue_running_jobs", queue="default") == 2
    assert value(text, "conveyor_queue_limit", queue="default") == 10
    assert value(text, "conveyor_queue_limit", queue="video") is None
    assert value(text, "conveyor_queue_paused", queue="video") == 1
    assert value(text, "conveyor_queue_paused", queue="default") == 0
    finished = "conveyor_queue_finished_last_minute"
    assert value(text, finished, queue="default", outcome="completed") == 9
    assert value(text, finished, queue="default", outcome="failed") == 1
    run_time = "conveyor_job_run_time_seconds"
    assert value(text, run_time, queue="default", quantile="0.5") == 0.25
    assert value(text, run_time, queue="default", quantile="0.95") == 1.5
    assert value(text, run_time, queue="video", quantile="0.5") is None


async def test_metrics_is_not_rate_limited_nor_in_the_schema(app: FastAPI) -> None:
    async with client_for(app) as client:
        for _ in range(8):
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers
        schema = (await client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_a_failing_stats_source_still_serves_http_metrics() -> None:
    async def broken() -> list[QueueStats]:
        raise ConnectionError("database down")

    app = make_app(broken)
    with capture_logs() as logs:
        async with client_for(app) as client:
            await client.get("/v1/jobs/1")
            text = await scrape(client)
    await app.state.rate_limiter.aclose()
    assert value(text, "conveyor_queue_stats_up") == 0
    assert "conveyor_jobs" not in text
    assert "conveyor_http_request_duration_seconds_count" in text
    (warning,) = [e for e in logs if e["event"] == "queue statistics unavailable for /metrics"]
    assert "database down" in warning["error"]


async def test_a_slow_stats_source_times_out() -> None:
    async def slow() -> list[QueueStats]:
        await asyncio.sleep(10)
        return []

    app = make_app(slow, stats_timeout_s=0.05)
    async with client_for(app) as client:
        text = await scrape(client)
    await app.state.rate_limiter.aclose()
    assert value(text, "conveyor_queue_stats_up") == 0


async def test_each_app_has_its_own_registry() -> None:
    first, second = make_app(), make_app()
    async with client_for(first) as a, client_for(second) as b:
        await a.get("/v1/jobs/1")
        text_b = await scrape(b)
        text_a = await scrape(a)
    for app in (first, second):
        await app.state.rate_limiter.aclose()
    name = "conveyor_http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "200"}
    assert value(text_a, name, **labels) == 1
    assert value(text_b, name, **labels) is None


async def test_without_a_stats_source_only_http_metrics() -> None:
    app = make_app(None)
    async with client_for(app) as client:
        text = await scrape(client)
    await app.state.rate_limiter.aclose()
    assert "conveyor_queue_stats_up" not in text
    assert "conveyor_http_request_duration_seconds" in text
