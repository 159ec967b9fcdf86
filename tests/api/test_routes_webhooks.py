"""``/v1/webhooks``: endpoints, the secret shown once, field-level 422s, the SSRF check at
registration, and deliveries through a real worker to a receiver on loopback, seen in
``/deliveries`` and verified with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, get_args

import httpx
import pytest
import standardwebhooks
from api_support import AppClient

import conveyor
from conveyor.api.webhook_schemas import EventTypeName
from conveyor.config import Settings
from conveyor.engine.retry import Backoff
from conveyor.notify import webhooks
from conveyor.store.base import Store
from conveyor.store.records import EventType
from http_receiver import Answer, Received, receiving

ALLOW = {"webhook_allow_hosts": ["127.0.0.1"]}


async def _create(http: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/webhooks", json={"url": url, "event_types": ["*"], **fields})
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


@asynccontextmanager
async def _worker(store: Store, **overrides: Any) -> AsyncIterator[None]:
    """A worker delivering webhooks on ``store`` (receivers on loopback allowed)."""
    kinds = conveyor.Registry()
    config = Settings(**{**ALLOW, "webhook_timeout": 3.0, **overrides})
    deliverer = webhooks.register(
        kinds, store, config, backoff=Backoff(base=0.2, factor=1.0, jitter=False)
    )
    worker = conveyor.Worker(
        store,
        conveyor.WorkerConfig(
            queues={"webhooks": 2}, safety_poll_interval=0.1, heartbeat_interval=1.0
        ),
        kinds=kinds,
    )
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, 10)
        await deliverer.aclose()


async def _deliveries(http: httpx.AsyncClient, webhook_id: int, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        response = await http.get(f"/v1/webhooks/{webhook_id}/deliveries")
        assert response.status_code == 200
        items: list[dict[str, Any]] = response.json()["items"]
        if len(items) >= n:
            return items
        assert time.monotonic() < deadline, f"{len(items)} deliveries, not {n}"
        await asyncio.sleep(0.05)


def test_the_event_types_offered_are_the_event_log_s() -> None:
    assert set(get_args(EventTypeName)) == {"*", *(t.value for t in EventType)}


async def test_the_secret_is_shown_on_create_and_rotate_only(app_client: AppClient) -> None:
    async with app_client() as http:
        made = await _create(http, "https://93.184.215.14/in", description="orders")
        secret = made["secret"]
        assert secret.startswith("whsec_")
        webhook = made["webhook"]
        assert webhook["event_types"] == ["*"]
        assert webhook["enabled"]
        shown = await http.get(f"/v1/webhooks/{webhook['id']}")
        assert shown.status_code == 200
        assert "whsec_" not in shown.text
        listed = await http.get("/v1/webhooks")
        assert [w["id"] for w in listed.json()["items"]] == [webhook["id"]]
        assert "whsec_" not in listed.text

        rotated = await http.post(f"/v1/webhooks/{webhook['id']}/rotate-secret")
        assert rotated.status_code == 200
        assert rotated.json()["secret"].startswith("whsec_")
        assert rotated.json()["secret"] != secret
        assert rotated.json()["webhook"]["previous_secret_expires_at"] is not None


async def test_list_change_and_delete(app_client: AppClient) -> None:
    async with app_client() as http:
        ids = [
            (await _create(http, f"https://93.184.215.14/{n}"))["webhook"]["id"] for n in range(3)
        ]
        page = (await http.get("/v1/webhooks", params={"limit": 2})).json()
        assert [w["id"] for w in page["items"]] == ids[:0:-1]
        rest = await http.get("/v1/webhooks", params={"limit": 2, "cursor": page["next_cursor"]})
        assert [w["id"] for w in rest.json()["items"]] == [ids[0]]
        assert rest.json()["next_cursor"] is None

        changed = await http.patch(
            f"/v1/webhooks/{ids[0]}", json={"event_types": ["job.failed"], "enabled": False}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["event_types"] == ["job.failed"]
        assert changed.json()["enabled"] is False
        assert (await http.delete(f"/v1/webhooks/{ids[0]}")).status_code == 204
        assert (await http.get(f"/v1/webhooks/{ids[0]}")).status_code == 404
        assert (await http.delete(f"/v1/webhooks/{ids[0]}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"url": "ftp://hooks.example.com/x", "event_types": ["*"]}, ["body", "url"], "http"),
        ({"url": "https://u:p@93.184.215.14/", "event_types": ["*"]}, ["body", "url"], "cred"),
        ({"url": "https://93.184.215.14/", "event_types": ["job.done"]}, None, ""),
        ({"url": "https://93.184.215.14/", "event_types": []}, ["body", "event_types"], ""),
        ({"url": "https://93.184.215.14/", "event_types": ["*"], "secret": "x"}, None, ""),
    ],
)
async def test_bad_fields_get_field_level_422s(
    app_client: AppClient, body: dict[str, Any], loc: list[str] | None, says: str
) -> None:
    async with app_client() as http:
        response = await http.post("/v1/webhooks", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        if loc is not None:
            assert detail[0]["loc"] == loc
            assert says in detail[0]["msg"]
        assert (await http.get("/v1/webhooks")).json()["items"] == []


async def test_loopback_is_refused_at_registration_without_the_allow_list(
    app_client: AppClient,
) -> None:
    async with app_client() as http:
        for url in ("http://127.0.0.1:9/in", "http://localhost:9/in", "http://[::1]:9/"):
            response = await http.post("/v1/webhooks", json={"url": url, "event_types": ["*"]})
            assert response.status_code == 422, response.text
            [detail] = response.json()["detail"]
            assert detail["loc"] == ["body", "url"]
            assert "loopback" in detail["msg"]
            assert "CONVEYOR_WEBHOOK_ALLOW_HOSTS" in detail["msg"]
        made = await _create(http, "https://93.184.215.14/in")
        refused = await http.patch(
            f"/v1/webhooks/{made['webhook']['id']}", json={"url": "http://169.254.169.254/"}
        )
        assert refused.status_code == 422
        assert "metadata" in refused.text
    async with app_client(**ALLOW) as http:
        await _create(http, "http://127.0.0.1:9/in")


async def test_a_ping_and_a_retried_delivery_verify_and_show_in_deliveries(
    app_client: AppClient, store: Store
) -> None:
    def flaky(request: Received) -> Answer:
        return Answer(500, b"not yet") if len(receiver.received) == 1 else Answer(204, b"")

    async with receiving(flaky) as receiver, app_client(**ALLOW) as http:
        made = await _create(http, f"{receiver.url}/hook")
        webhook_id, secret = made["webhook"]["id"], made["secret"]
        queued = await http.post(f"/v1/webhooks/{webhook_id}/test")
        assert queued.status_code == 202, queued.text
        message_id = queued.json()["message_id"]
        async with _worker(store):
            log = await _deliveries(http, webhook_id, 2)
            assert [(d["attempt"], d["status_code"]) for d in log] == [(2, 204), (1, 500)]
            assert {d["message_id"] for d in log} == {message_id}
            assert log[1]["error"] == "HTTP 500"
            assert log[1]["response_excerpt"] == "not yet"
            assert log[0]["payload"]["type"] == "webhook.ping"

            again = await http.post(f"/v1/webhooks/{webhook_id}/deliveries/{log[1]['id']}/retry")
            assert again.status_code == 202
            assert again.json()["message_id"] == message_id
            await _deliveries(http, webhook_id, 3)
        assert (
            await http.post(f"/v1/webhooks/{webhook_id}/deliveries/999999/retry")
        ).status_code == 404

    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {message_id}
    for request in receiver.received:
        body = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        assert body["type"] == "webhook.ping"
        assert body["data"]["webhook_id"] == webhook_id
