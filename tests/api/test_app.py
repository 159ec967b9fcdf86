"""The app's wiring: the cross-cutting middlewares and /metrics are installed, the caller
dependency counts against the per-caller limit (one budget per user and per API key), the
per-address limit holds the unauthenticated calls, and the request id travels."""

from __future__ import annotations

from pathlib import Path

import httpx
from api_support import api_key, api_settings, bearer, serving, submit

import conveyor
from conveyor.api import create_app
from conveyor.store.base import Store


async def test_responses_carry_the_request_id_and_security_headers(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/v1/queues", headers={"X-Request-ID": "abc.123"})
    assert response.headers["X-Request-ID"] == "abc.123"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    generated = await http.get("/v1/queues", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["X-Request-ID"] != "bad id with spaces"


async def test_the_request_id_reaches_the_job(http: httpx.AsyncClient, store: Store) -> None:
    made = await submit(http, "test.echo", {}, headers={"X-Request-ID": "from-the-client"})
    job = await store.get_job(made["job_id"])
    assert job is not None
    assert job.meta == {"request_id": "from-the-client"}


async def test_per_address_limit_answers_429(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(api_settings(tmp_path, rate_limit_per_ip="2/hour"), store=store, kinds=kinds)
    async with serving(app) as http:
        statuses = [(await http.get("/v1/queues")).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]
        limited = await http.get("/v1/requests")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"]
        assert limited.headers["RateLimit-Limit"] == "2"
        assert (await http.get("/health")).status_code == 200  # probes are not limited
        # A backend calling with an API key from the same address is not held to it.
        key = {"Authorization": bearer(await api_key(app))}
        assert (await http.get("/v1/queues", headers=key)).status_code == 200


async def test_per_caller_limit_answers_429(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(
        api_settings(tmp_path, rate_limit_per_caller="1/hour"), store=store, kinds=kinds
    )
    async with serving(app, auth=True) as http:
        assert (await http.get("/v1/jobs")).status_code == 200
        refused = await http.get("/v1/jobs")
        assert refused.status_code == 429
        assert "this caller" in refused.json()["detail"]
        assert refused.headers["Retry-After"]
        assert refused.headers["RateLimit-Limit"] == "1"
        seed = await http.get("/api/queue/status")
        assert seed.status_code == 429
        assert seed.json()["success"] is False


async def test_callers_do_not_share_a_caller_limit(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    # Each API key (and each user) has a budget of its own, whatever address it calls
    # from; a call without a credential is refused (401), not counted against one.
    app = create_app(
        api_settings(tmp_path, rate_limit_per_caller="1/hour"), store=store, kinds=kinds
    )
    async with serving(app) as http:
        first = {"Authorization": bearer(await api_key(app, name="first"))}
        second = {"Authorization": bearer(await api_key(app, name="second"))}
        assert (await http.get("/v1/jobs", headers=first)).status_code == 200
        assert (await http.get("/v1/jobs", headers=second)).status_code == 200
        assert (await http.get("/v1/jobs", headers=first)).status_code == 429
        statuses = [(await http.get("/v1/jobs")).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]


async def test_metrics_are_served(http: httpx.AsyncClient) -> None:
    await submit(http, "test.echo")
    body = (await http.get("/metrics")).text
    assert 'conveyor_jobs{queue="default",state="queued"} 1.0' in body
    assert "conveyor_http_request_duration_seconds_bucket" in body
    assert "conveyor_queue_stats_up 1.0" in body
