"""Errors are JSON with a clear message and never a traceback; a database outage is 503
with Retry-After."""

from __future__ import annotations

import httpx
import pytest

from conveyor.store.base import Store

DATABASE_ROUTES = [
    ("POST", "/v1/requests", {"kind": "test.echo", "input": {}}),
    ("GET", "/v1/requests", None),
    ("GET", "/v1/requests/1", None),
    ("POST", "/v1/requests/1/cancel", None),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/1", None),
    ("GET", "/v1/queues", None),
    ("POST", "/v1/queues/default/pause", None),
    ("POST", "/api/video/process", {"video_url": "https://v.example/", "company_name": "a"}),
    ("GET", "/api/queue/status", None),
    ("GET", "/api/queue/jobs/video/1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), DATABASE_ROUTES)
async def test_a_closed_store_answers_503_with_retry_after_and_no_traceback(
    http: httpx.AsyncClient, store: Store, method: str, path: str, body: object
) -> None:
    await store.close()
    response = await http.request(method, path, json=body)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    payload = response.json()
    assert payload["detail"] == "the database is unavailable; retry in 5 seconds"
    assert payload["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    assert store.url not in response.text  # the cause is logged, not shown
    if path.startswith("/api/"):
        assert payload["success"] is False
        assert payload["message"] == payload["detail"]


async def test_unknown_routes_and_methods_answer_json(http: httpx.AsyncClient) -> None:
    missing = await http.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["detail"] == "Not Found"
    wrong = await http.delete("/v1/requests")
    assert wrong.status_code == 405
    assert wrong.json()["detail"] == "Method Not Allowed"


async def test_error_bodies_carry_the_request_id(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/requests/77", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no request with id 77", "request_id": "trace-me"}
