"""``/v1/jobs``: operators' view with error history, scoped to the caller's tenant."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
from api_support import submit

from conveyor.store.base import Store
from conveyor.store.records import NewJob

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
"""The one time format of the API and the CLI."""


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


async def test_a_failed_job_shows_its_error_history_with_tracebacks(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    made = await submit(http, "test.fail")
    await run_jobs()
    response = await http.get(f"/v1/jobs/{made['job_id']}")
    assert response.status_code == 200
    job = response.json()
    assert job["state"] == "failed"  # a job's word; a request's is status (the seed's)
    assert job["kind"] == "test.fail"
    assert job["tenant_id"] == "default"
    [error] = job["errors"]
    assert error["type"] == "Discard"
    assert error["message"] == "this kind always fails"
    assert "Traceback" in error["traceback"]
    assert job["meta"]["request_id"]


async def test_jobs_list_pages_and_filters(
    http: httpx.AsyncClient, store: Store, run_jobs: Callable[..., Any]
) -> None:
    made = [(await submit(http, "test.echo", {"n": i}))["job_id"] for i in range(5)]
    await store.enqueue([_job(queue="other", kind="test.typed", payload={"name": "a"})])
    first = (await http.get("/v1/jobs", params={"limit": 4})).json()
    second = (
        await http.get("/v1/jobs", params={"limit": 4, "cursor": first["next_cursor"]})
    ).json()
    assert second["next_cursor"] is None
    ids = [j["id"] for j in first["items"] + second["items"]]
    assert ids == [6, *made[::-1]]
    by_queue = (await http.get("/v1/jobs", params={"queue": "other"})).json()
    assert [j["id"] for j in by_queue["items"]] == [6]
    by_kind = (await http.get("/v1/jobs", params={"kind": "test.echo", "limit": 100})).json()
    assert len(by_kind["items"]) == 5
    await run_jobs()
    done = (await http.get("/v1/jobs", params={"state": "completed", "limit": 100})).json()
    assert sorted(j["id"] for j in done["items"]) == made
    queued = (await http.get("/v1/jobs", params={"state": "queued"})).json()
    assert [j["id"] for j in queued["items"]] == [6]
    # status is the alias earlier clients used; two that disagree are refused.
    alias = (await http.get("/v1/jobs", params={"status": "queued"})).json()
    assert [j["id"] for j in alias["items"]] == [6]
    both = await http.get("/v1/jobs", params={"state": "queued", "status": "failed"})
    assert both.status_code == 422
    assert both.json()["detail"][0]["loc"] == ["query", "status"]
    later = (await http.get("/v1/jobs", params={"created_after": "2999-01-01T00:00:00Z"})).json()
    assert later["items"] == []


async def test_another_tenants_job_is_invisible(http: httpx.AsyncClient, store: Store) -> None:
    [theirs] = await store.enqueue([_job(tenant_id="someone-else")])
    assert (await http.get(f"/v1/jobs/{theirs.id}")).status_code == 404
    assert (await http.post(f"/v1/jobs/{theirs.id}/cancel")).status_code == 404
    assert (await http.post(f"/v1/jobs/{theirs.id}/retry")).status_code == 404
    assert (await http.get("/v1/jobs")).json()["items"] == []
    job = await store.get_job(theirs.id)
    assert job is not None
    assert job.state == "queued"


async def test_cancel_and_retry_a_job(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    made = await submit(http, "test.echo")
    url = f"/v1/jobs/{made['job_id']}"
    assert (await http.post(f"{url}/retry")).status_code == 409
    cancelled = await http.post(f"{url}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    retried = await http.post(f"{url}/retry")
    assert retried.json()["state"] == "queued"
    await run_jobs()
    assert (await http.post(f"{url}/cancel")).status_code == 409
    assert (await http.get("/v1/jobs/12345")).status_code == 404


async def test_every_time_is_iso_8601_with_the_utc_offset(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    made = await submit(http, "test.fail")
    await run_jobs()
    job = (await http.get(f"/v1/jobs/{made['job_id']}")).json()
    request = (await http.get(f"/v1/requests/{made['request_id']}")).json()
    times = [
        job["created_at"],
        job["run_at"],
        job["started_at"],
        job["finished_at"],
        job["errors"][0]["at"],
        request["created_at"],
        request["finished_at"],
        made["created_at"],
        (await http.get("/health")).json()["timestamp"],
    ]
    for value in times:
        assert ISO_UTC.fullmatch(value), value
