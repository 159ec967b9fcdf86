"""Admission (backpressure) and the wait estimate."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import AppClient, submit

from conveyor.api.errors import Overloaded
from conveyor.api.submit import check_backlog, check_memory, estimate_wait
from conveyor.engine import services
from conveyor.store.base import Store
from conveyor.store.records import JobFilter, NewJob, QueueStats, WorkerInfo


def stats(**overrides: Any) -> QueueStats:
    fields: dict[str, Any] = {
        "name": "q",
        "paused": False,
        "counts": {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
        "scheduled": 0,
        "running": 0,
        "limit": 2,
        "cluster_limit": None,
        "oldest_queued_age_s": None,
        "completed_last_minute": 0,
        "failed_last_minute": 0,
        "run_time_p50_s": 10.0,
        "run_time_p95_s": 20.0,
    }
    fields.update(overrides)
    return QueueStats(**fields)


@pytest.mark.parametrize(
    ("position", "overrides", "expected"),
    [
        (0, {}, 0.0),  # two free slots: starts now
        (1, {}, 0.0),
        (2, {}, 10.0),  # waits for one of the two running before it
        (3, {}, 10.0),
        (4, {}, 20.0),
        (0, {"running": 2}, 10.0),  # no free slot
        (1, {"running": 1}, 10.0),
        (0, {"run_time_p50_s": None}, 0.0),  # free slot: no run time needed
        (2, {"run_time_p50_s": None}, None),
        (0, {"limit": None}, None),  # no worker serves the queue
        (0, {"paused": True}, None),
    ],
)
def test_estimate_wait(position: int, overrides: dict[str, Any], expected: float | None) -> None:
    assert estimate_wait(position, stats(**overrides)) == expected


def test_no_statistics_no_estimate() -> None:
    assert estimate_wait(0, None) is None


def test_backlog_counts_due_jobs_only() -> None:
    counts = {"queued": 12, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    check_backlog(stats(counts=counts, scheduled=2), max_backlog=10)  # 10 due: fine
    with pytest.raises(Overloaded, match="12 jobs waiting, limit 10") as refused:
        check_backlog(stats(counts=counts), max_backlog=10)
    assert refused.value.retry_after_s == 60  # nothing completed lately
    with pytest.raises(Overloaded, match="retry in 1 seconds") as fast:
        check_backlog(stats(counts=counts, completed_last_minute=600), max_backlog=10)
    assert fast.value.retry_after_s == 1  # 10 a second drain the 2 extra at once


def _job(**overrides: Any) -> NewJob:
    fields: dict[str, Any] = {
        "kind": "test.echo",
        "queue": "default",
        "payload": {},
        "priority": 3,
        "max_attempts": 3,
        "timeout_s": None,
    }
    fields.update(overrides)
    return NewJob(**fields)


async def test_a_full_queue_refuses_submissions_with_503(
    app_client: AppClient, store: Store
) -> None:
    await store.enqueue([_job() for _ in range(3)])
    await store.enqueue([_job(delay_s=3600) for _ in range(5)])  # scheduled: not due
    async with app_client(max_backlog=3) as http:
        admitted = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert admitted.status_code == 202  # 3 due: at the limit, not above
    # A new app, so no cached statistics: 4 due now.
    async with app_client(max_backlog=3) as http:
        refused = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "60"
        assert "queue 'default' is full" in refused.json()["detail"]
        # Other queues are not affected.
        video = {"video_url": "https://v.example/", "company_name": "a"}
        assert (await submit(http, "video.process", video))["queue"] == "video"
        seed = await http.post("/api/video/process", json=video)
        assert seed.status_code == 202
    assert len(await store.list_jobs(JobFilter(queue="default", limit=100))) == 9


async def test_memory_above_the_threshold_refuses_submissions_with_503(
    app_client: AppClient, store: Store
) -> None:
    async with app_client(max_memory_mb=1) as http:
        refused = await http.post("/v1/requests", json={"kind": "test.echo", "input": {}})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "10"
        assert "low on memory" in refused.json()["detail"]
        seed = await http.post(
            "/api/interactions/i-1/questions", json={"question": "q", "companyName": "c"}
        )
        assert seed.status_code == 503
        assert seed.json()["success"] is False
        # Reads still work.
        assert (await http.get("/v1/requests")).status_code == 200
        health = (await http.get("/health")).json()
        assert health["status"] == "degraded"
    assert await store.list_jobs(JobFilter()) == []


async def test_invalid_input_is_422_even_under_pressure(app_client: AppClient) -> None:
    async with app_client(max_memory_mb=1) as http:
        response = await http.post("/v1/requests", json={"kind": "test.typed", "input": {}})
    assert response.status_code == 422


async def test_estimates_come_from_the_queue_statistics(
    app_client: AppClient, store: Store
) -> None:
    await store.register_worker(WorkerInfo("w", "host", 1, {"default": 1}), 60)
    async with app_client() as http:
        first = await submit(http, "test.echo")
        second = await submit(http, "test.echo")
    assert first["estimated_wait_seconds"] == 0.0
    assert second["queue_position"] == 1
    assert second["estimated_wait_seconds"] is None  # no run time measured yet


def test_the_memory_check_reads_rss_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings: list[float] = []

    def rss() -> float:
        readings.append(100.0)
        return 100.0

    monkeypatch.setattr(services, "rss_mb", rss)
    monkeypatch.setattr(services, "_last_rss", (float("-inf"), 0.0))
    for _ in range(5):
        check_memory(200, max_age=60)
    assert len(readings) == 1
    with pytest.raises(Overloaded, match="low on memory"):
        check_memory(50, max_age=0)
    assert len(readings) == 2
