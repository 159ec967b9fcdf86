"""``/v1/requests``: submission, validation, idempotency, listing, cancel and retry; on
every store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from api_support import AppClient, api_key, app_of, bearer, submit, user_token

from conveyor.store.accounts import Role
from conveyor.store.base import Store
from conveyor.store.records import JobFilter, RequestFilter, WorkerInfo


async def stored(store: Store) -> tuple[int, int]:
    """(requests, jobs) in the database."""
    requests = await store.list_requests(RequestFilter(tenant_id="default", limit=1000))
    jobs = await store.list_jobs(JobFilter(limit=1000))
    return len(requests), len(jobs)


# -- POST ---------------------------------------------------------------------------------
async def test_submit_answers_202_with_the_request_and_its_prospects(
    http: httpx.AsyncClient, store: Store
) -> None:
    response = await http.post(
        "/v1/requests",
        json={"kind": "test.typed", "input": {"name": "Ada"}},
        headers={"X-Request-ID": "req-42"},
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {
        "request_id",
        "job_id",
        "kind",
        "status",
        "queue",
        "queue_position",
        "estimated_wait_seconds",
        "created_at",
    }
    assert body["kind"] == "test.typed"
    assert body["status"] == "queued"
    assert body["queue"] == "default"
    assert body["queue_position"] == 0
    # No worker serves the queue yet: nobody can say when it starts.
    assert body["estimated_wait_seconds"] is None
    assert response.headers["Location"] == f"/v1/requests/{body['request_id']}"
    assert response.headers["X-Request-ID"] == "req-42"
    # Durable, with the defaults filled in by the input model and the request id kept.
    job = await store.get_job(body["job_id"])
    assert job is not None
    assert job.payload == {"name": "Ada", "count": 1}
    assert job.meta["request_id"] == "req-42"
    request = await store.get_request(body["request_id"], "default")
    assert request is not None
    assert request.http_request_id == "req-42"
    assert request.caller_id == (await http.get("/v1/me")).json()["caller_id"]
    assert request.caller_id.startswith("key:")


async def test_queue_position_and_wait_follow_the_queue(
    http: httpx.AsyncClient, store: Store
) -> None:
    # A live worker with two slots on the queue: the first two start at once.
    await store.register_worker(WorkerInfo("w", "host", 1, {"default": 2}), 60)
    answers = [await submit(http, "test.echo", {"n": i}) for i in range(3)]
    assert [a["queue_position"] for a in answers] == [0, 1, 2]
    assert [a["estimated_wait_seconds"] for a in answers[:2]] == [0.0, 0.0]
    # The third waits for a slot, but no run time has been measured yet.
    assert answers[2]["estimated_wait_seconds"] is None


async def test_a_kind_without_an_input_model_takes_any_object(
    http: httpx.AsyncClient, store: Store
) -> None:
    first = await submit(http, "test.echo", {"anything": [1, 2, {"deep": True}]})
    job = await store.get_job(first["job_id"])
    assert job is not None
    assert job.payload == {"anything": [1, 2, {"deep": True}]}
    second = await submit(http, "test.echo")  # input left out: an empty object
    job = await store.get_job(second["job_id"])
    assert job is not None
    assert job.payload == {}


async def test_invalid_input_gets_422_naming_each_field_and_stores_nothing(
    http: httpx.AsyncClient, store: Store
) -> None:
    response = await http.post(
        "/v1/requests", json={"kind": "test.typed", "input": {"name": "", "count": 11}}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {tuple(e["loc"]) for e in detail} == {
        ("body", "input", "name"),
        ("body", "input", "count"),
    }
    assert all(e["msg"] for e in detail)
    assert await stored(store) == (0, 0)


async def test_an_unknown_kind_gets_422_listing_the_kinds(
    http: httpx.AsyncClient, store: Store
) -> None:
    response = await http.post("/v1/requests", json={"kind": "no.such", "input": {}})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "kind"]
    assert error["type"] == "unknown_kind"
    kinds = ["qa.answer", "test.assets", "test.echo", "test.fail", "test.typed", "video.process"]
    assert error["ctx"]["kinds"] == kinds
    for kind in kinds:
        assert kind in error["msg"]
    assert await stored(store) == (0, 0)


async def test_malformed_bodies_get_422_and_store_nothing(
    http: httpx.AsyncClient, store: Store
) -> None:
    cases: list[dict[str, Any]] = [
        {"json": {"input": {}}},  # no kind
        {"json": {"kind": "test.echo", "input": [1, 2]}},  # input not an object
        {"json": {"kind": "test.echo", "input": {}, "extra": 1}},  # unknown field
        {"json": ["test.echo"]},
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
    ]
    for case in cases:
        response = await http.post("/v1/requests", **case)
        assert response.status_code == 422, (case, response.text)
        assert isinstance(response.json()["detail"], list)
        assert "Traceback" not in response.text
    missing = (await http.post("/v1/requests", json={"input": {}})).json()["detail"]
    assert missing[0]["loc"] == ["body", "kind"]
    assert await stored(store) == (0, 0)


async def test_a_body_over_the_size_limit_gets_413_and_stores_nothing(
    app_client: AppClient, store: Store
) -> None:
    async with app_client(max_body_bytes=2048) as http:
        response = await http.post(
            "/v1/requests", json={"kind": "test.echo", "input": {"blob": "x" * 4096}}
        )
    assert response.status_code == 413
    assert await stored(store) == (0, 0)


# -- idempotency ------------------------------------------------------------------------
async def test_the_same_idempotency_key_returns_the_same_request_with_200(
    http: httpx.AsyncClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "order-7"}
    body = {"kind": "test.typed", "input": {"name": "Ada"}}
    first = await http.post("/v1/requests", json=body, headers=headers)
    again = await http.post("/v1/requests", json=body, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"]
    assert again.json()["job_id"] == first.json()["job_id"]
    other = await http.post("/v1/requests", json=body, headers={"Idempotency-Key": "order-8"})
    assert other.status_code == 202
    assert await stored(store) == (2, 2)


async def test_an_idempotency_key_is_the_tenants_whichever_credential_sends_it(
    http: httpx.AsyncClient, store: Store
) -> None:
    app = app_of(http)
    body = {"kind": "test.typed", "input": {"name": "Ada"}}
    key = {"Idempotency-Key": "order-9"}
    first = await http.post("/v1/requests", json=body, headers=key)
    assert first.status_code == 202
    # Another API key and a user of the same tenant: the same request, with 200.
    for credential in (await api_key(app, name="second"), await user_token(app, Role.MEMBER)):
        again = await http.post(
            "/v1/requests", json=body, headers={**key, "Authorization": bearer(credential)}
        )
        assert again.status_code == 200, again.text
        assert again.json()["request_id"] == first.json()["request_id"]
        assert again.json()["job_id"] == first.json()["job_id"]
    # The same tenant's key with another input, from another credential: a conflict.
    member = bearer(await user_token(app, Role.MEMBER))
    conflict = await http.post(
        "/v1/requests",
        json={"kind": "test.typed", "input": {"name": "Bob"}},
        headers={**key, "Authorization": member},
    )
    assert conflict.status_code == 409
    # Another tenant's same key: a request of its own, which the first tenant cannot see.
    other = {**key, "Authorization": bearer(await api_key(app, "other"))}
    theirs = await http.post("/v1/requests", json=body, headers=other)
    assert theirs.status_code == 202
    assert theirs.json()["request_id"] != first.json()["request_id"]
    mine = await http.get(f"/v1/requests/{theirs.json()['request_id']}")
    assert mine.status_code == 404
    assert (await http.post("/v1/requests", json=body, headers=other)).status_code == 200
    assert await stored(store) == (1, 2)
    assert len(await store.list_requests(RequestFilter(tenant_id="other"))) == 1


async def test_concurrent_submissions_with_one_key_create_one_request(
    http: httpx.AsyncClient, store: Store
) -> None:
    body = {"kind": "test.echo", "input": {"n": 1}}
    responses = await asyncio.gather(
        *(
            http.post("/v1/requests", json=body, headers={"Idempotency-Key": "race"})
            for _ in range(8)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert await stored(store) == (1, 1)


async def test_reusing_a_key_for_a_different_request_gets_409(
    http: httpx.AsyncClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "k"}
    await http.post("/v1/requests", json={"kind": "test.echo", "input": {"a": 1}}, headers=headers)
    response = await http.post(
        "/v1/requests", json={"kind": "test.echo", "input": {"a": 2}}, headers=headers
    )
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["detail"]
    assert await stored(store) == (1, 1)


# -- GET --------------------------------------------------------------------------------
async def test_get_shows_status_progress_result_errors_and_assets(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    done = await submit(http, "test.assets")
    failed = await submit(http, "test.fail")
    await run_jobs()
    body = (await http.get(f"/v1/requests/{done['request_id']}")).json()
    assert body["status"] == "completed"
    assert body["result"]["image_url"] == "https://cdn.example.com/a.png"
    assert body["assets"] == [
        {"field": "files[0].url", "url": "https://cdn.example.com/b.pdf"},
        {"field": "image_url", "url": "https://cdn.example.com/a.png"},
    ]
    assert body["errors"] == []
    assert body["started_at"] is not None
    assert body["finished_at"] is not None
    body = (await http.get(f"/v1/requests/{failed['request_id']}")).json()
    assert body["status"] == "failed"
    [error] = body["errors"]
    assert error["message"] == "this kind always fails"
    assert error["attempt"] == 1
    assert "traceback" not in error  # operators see it under /v1/jobs


async def test_get_an_unknown_request_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/requests/999")
    assert response.status_code == 404
    assert response.json()["detail"] == "no request with id 999"
    assert (await http.get("/v1/requests/0")).status_code == 422
    assert (await http.get(f"/v1/requests/{2**63}")).status_code == 422
    assert (await http.get("/v1/requests/abc")).status_code == 422


async def test_list_pages_with_an_opaque_cursor(http: httpx.AsyncClient) -> None:
    made = [(await submit(http, "test.echo", {"n": i}))["request_id"] for i in range(25)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = (await http.get("/v1/requests", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert not cursor.isdigit()  # opaque, not a bare id
    assert pages == 3
    assert seen == made[::-1]
    default = (await http.get("/v1/requests")).json()
    assert len(default["items"]) == 20
    exact = (await http.get("/v1/requests", params={"limit": 25})).json()
    assert len(exact["items"]) == 25
    assert exact["next_cursor"] is None


async def test_list_refuses_bad_limits_and_cursors(http: httpx.AsyncClient) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "not-a-cursor"}, {"status": "lost"}):
        response = await http.get("/v1/requests", params=params)
        assert response.status_code == 422, params
    bad = (await http.get("/v1/requests", params={"cursor": "bm9wZQ"})).json()
    assert bad["detail"][0]["loc"] == ["query", "cursor"]


async def test_list_filters_by_status_kind_and_creation_time(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    echo = await submit(http, "test.echo", {})
    failing = await submit(http, "test.fail", {})
    await run_jobs()
    queued = await submit(http, "test.typed", {"name": "x"})

    async def ids(**params: Any) -> list[int]:
        response = await http.get("/v1/requests", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(status="completed") == [echo["request_id"]]
    assert await ids(status="failed") == [failing["request_id"]]
    assert await ids(status="queued") == [queued["request_id"]]
    assert await ids(kind="test.typed") == [queued["request_id"]]
    assert await ids(kind="test.typed", status="failed") == []
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    assert len(await ids(created_after=(now - hour).isoformat())) == 3
    assert await ids(created_after=(now + hour).isoformat()) == []
    assert await ids(created_before=(now - hour).isoformat()) == []
    # A time without a zone is UTC.
    naive = (now + hour).replace(tzinfo=None).isoformat()
    assert len(await ids(created_before=naive)) == 3


# -- cancel and retry -------------------------------------------------------------------
async def test_cancel_a_queued_request_then_retry_it(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    made = await submit(http, "test.echo", {"x": 1})
    url = f"/v1/requests/{made['request_id']}"
    cancelled = await http.post(f"{url}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert (await http.post(f"{url}/cancel")).status_code == 200  # again: no change
    retried = await http.post(f"{url}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    assert (await http.post(f"{url}/retry")).status_code == 409  # queued: nothing to retry
    await run_jobs()
    assert (await http.get(url)).json()["status"] == "completed"
    late = await http.post(f"{url}/cancel")
    assert late.status_code == 409
    assert "completed" in late.json()["detail"]


async def test_retry_a_failed_request(
    http: httpx.AsyncClient, run_jobs: Callable[..., Any]
) -> None:
    made = await submit(http, "test.fail")
    await run_jobs()
    url = f"/v1/requests/{made['request_id']}"
    retried = await http.post(f"{url}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    await run_jobs()
    body = (await http.get(url)).json()
    assert body["status"] == "failed"
    assert [e["attempt"] for e in body["errors"]] == [1, 2]


async def test_cancel_and_retry_of_an_unknown_request_are_404(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/requests/5/cancel")).status_code == 404
    assert (await http.post("/v1/requests/5/retry")).status_code == 404
