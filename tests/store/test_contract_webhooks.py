"""The store contract, webhooks: endpoints, their delivery log and their delivery slots
(:class:`conveyor.store.webhooks.WebhookStore`), on every store kind and on the
PostgreSQL store the API opens (``role="auto"``, every verb as conveyor_api under row
security). Races run on two store instances on one database (``peer_store``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from conveyor.store.base import DataRejected, Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlite import SqliteStore
from conveyor.store.webhooks import DeliveryRecorded, NewDelivery, NewWebhook, WebhookChange
from pg_server import PgTestServer

A = "tenant-a"
B = "tenant-b"


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-as-api"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store, and the PostgreSQL store the API opens (``role="auto"``)."""
    if request.param != "sqlite":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    kind: str = request.param
    return kind


@asynccontextmanager
async def _opened(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    opened: Store
    if kind == "sqlite":
        opened = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    else:
        server: PgTestServer = request.getfixturevalue("pg_server")
        opened = PostgresStore(server.url, role="auto" if kind == "postgresql-as-api" else "none")
    await opened.open()
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    async with _opened(store_kind, tmp_path, request) as opened:
        yield opened


@pytest.fixture
async def peer_store(
    store: Store, store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    async with _opened(store_kind, tmp_path, request) as opened:
        yield opened


def _new(tenant_id: str = A, **overrides: object) -> NewWebhook:
    fields: dict[str, object] = {
        "tenant_id": tenant_id,
        "url": "https://hooks.example.com/in",
        "event_types": ("job.completed", "job.failed"),
        "secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "description": "orders",
    }
    fields.update(overrides)
    return NewWebhook(**fields)  # type: ignore[arg-type]


def _attempt(webhook_id: int, *, ok: bool, attempt: int = 1, tenant_id: str = A) -> NewDelivery:
    return NewDelivery(
        tenant_id=tenant_id,
        webhook_id=webhook_id,
        message_id=f"msg_7_{webhook_id}",
        event_id=7,
        event_type="job.completed",
        job_id=99,
        attempt=attempt,
        status_code=200 if ok else 500,
        latency_ms=12.5,
        response_excerpt="ok" if ok else "boom",
        error=None if ok else "HTTP 500",
        payload={"type": "job.completed", "timestamp": "t", "data": {"id": 7}},
        succeeded=ok,
    )


async def test_create_read_list_update_delete(store: Store) -> None:
    made = await store.create_webhook(_new())
    assert made.tenant_id == A
    assert made.enabled
    assert made.consecutive_failures == 0
    assert made.event_types == ("job.completed", "job.failed")
    assert made.description == "orders"
    assert made.previous_secret is None
    assert await store.get_webhook(made.id, A) == made
    second = await store.create_webhook(_new(url="https://hooks.example.com/2"))
    assert [w.id for w in await store.list_webhooks(A)] == [second.id, made.id]
    assert [w.id for w in await store.list_webhooks(A, before_id=second.id)] == [made.id]
    assert [w.id for w in await store.list_webhooks(A, limit=1)] == [second.id]

    changed = await store.update_webhook(
        made.id, A, WebhookChange(event_types=("*",), enabled=False)
    )
    assert changed is not None
    assert changed.event_types == ("*",)
    assert not changed.enabled
    assert changed.url == made.url
    assert changed.description == "orders"
    assert changed.subscribed("job.queued")

    assert await store.delete_webhook(made.id, A)
    assert not await store.delete_webhook(made.id, A)
    assert await store.get_webhook(made.id, A) is None


async def test_another_tenants_endpoints_are_not_found(store: Store) -> None:
    theirs = await store.create_webhook(_new(B))
    assert await store.get_webhook(theirs.id, A) is None
    assert await store.list_webhooks(A) == []
    assert await store.update_webhook(theirs.id, A, WebhookChange(description="x")) is None
    assert await store.rotate_webhook_secret(theirs.id, A, "whsec_bmV3", 60) is None
    assert not await store.delete_webhook(theirs.id, A)
    assert await store.list_deliveries(theirs.id, A) == []
    taken = await store.take_webhook_slot(theirs.id, A, "1:1", 4, 30)
    assert taken.webhook is None
    assert not taken.taken
    assert await store.get_webhook(theirs.id, B) == theirs


async def test_rotation_keeps_the_previous_secret_for_the_grace(store: Store) -> None:
    made = await store.create_webhook(_new())
    rotated = await store.rotate_webhook_secret(made.id, A, "whsec_bmV3LXNlY3JldA==", 3600)
    assert rotated is not None
    assert rotated.secret == "whsec_bmV3LXNlY3JldA=="
    assert rotated.previous_secret == made.secret
    assert rotated.previous_expires_at is not None
    assert rotated.secrets(rotated.updated_at) == (rotated.secret, made.secret)
    assert rotated.secrets(rotated.previous_expires_at + 1) == (rotated.secret,)
    ended = await store.rotate_webhook_secret(made.id, A, "whsec_dGhpcmQ=", 0)
    assert ended is not None
    assert ended.secrets(ended.updated_at + 0.001) == ("whsec_dGhpcmQ=",)


async def test_webhooks_for_tenants_are_the_enabled_ones_of_those_named(store: Store) -> None:
    a = await store.create_webhook(_new(A))
    b = await store.create_webhook(_new(B))
    await store.create_webhook(_new(A, enabled=False))
    await store.create_webhook(_new("tenant-c"))
    found = await store.webhooks_for_tenants([A, B, A])
    assert sorted(w.id for w in found) == sorted([a.id, b.id])
    assert await store.webhooks_for_tenants([]) == []


async def test_deliveries_are_logged_and_count_against_the_endpoint(store: Store) -> None:
    made = await store.create_webhook(_new())
    first = await store.record_delivery(_attempt(made.id, ok=False), disable_after=3)
    assert first.webhook is not None
    assert first.webhook.consecutive_failures == 1
    assert not first.disabled_now
    row = first.delivery
    assert row is not None
    assert (row.status_code, row.error, row.attempt, row.event_id) == (500, "HTTP 500", 1, 7)
    assert row.payload["data"] == {"id": 7}
    assert row.message_id == f"msg_7_{made.id}"
    await store.record_delivery(_attempt(made.id, ok=False, attempt=2), disable_after=3)
    ok = await store.record_delivery(_attempt(made.id, ok=True, attempt=3), disable_after=3)
    assert ok.webhook is not None
    assert ok.webhook.consecutive_failures == 0

    listed = await store.list_deliveries(made.id, A)
    assert [d.attempt for d in listed] == [3, 2, 1]
    assert [d.attempt for d in await store.list_deliveries(made.id, A, before_id=listed[0].id)] == [
        2,
        1,
    ]
    assert await store.get_delivery(listed[2].id, made.id, A) == row
    assert await store.get_delivery(listed[2].id, made.id, B) is None


async def test_the_failure_that_reaches_the_limit_disables_once(store: Store) -> None:
    made = await store.create_webhook(_new())
    outcomes = [
        await store.record_delivery(_attempt(made.id, ok=False, attempt=n), disable_after=2)
        for n in (1, 2, 3)
    ]
    assert [o.disabled_now for o in outcomes] == [False, True, False]
    after = outcomes[1].webhook
    assert after is not None
    assert not after.enabled
    assert after.disabled_reason is not None
    assert "2 consecutive" in after.disabled_reason
    assert "HTTP 500" in after.disabled_reason
    assert await store.webhooks_for_tenants([A]) == []

    enabled = await store.update_webhook(made.id, A, WebhookChange(enabled=True))
    assert enabled is not None
    assert enabled.enabled
    assert enabled.consecutive_failures == 0
    assert enabled.disabled_reason is None


async def test_deleting_an_endpoint_deletes_its_log(store: Store) -> None:
    made = await store.create_webhook(_new())
    await store.record_delivery(_attempt(made.id, ok=True), disable_after=3)
    assert await store.delete_webhook(made.id, A)
    assert await store.list_deliveries(made.id, A) == []
    gone = await store.record_delivery(_attempt(made.id, ok=True), disable_after=3)
    assert gone == DeliveryRecorded(None, None, False)


async def test_slots_cap_the_deliveries_in_flight(store: Store, peer_store: Store) -> None:
    made = await store.create_webhook(_new())
    takes = [(store if n % 2 else peer_store) for n in range(6)]
    answers = await asyncio.gather(
        *(s.take_webhook_slot(made.id, A, f"{n}:1", 2, 30) for n, s in enumerate(takes))
    )
    assert sum(a.taken for a in answers) == 2
    holders = [f"{n}:1" for n, a in enumerate(answers) if a.taken]
    # A holder keeps its slot; another is refused until one is given back.
    assert (await store.take_webhook_slot(made.id, A, holders[0], 2, 30)).taken
    assert not (await store.take_webhook_slot(made.id, A, "late:1", 2, 30)).taken
    await peer_store.release_webhook_slot(made.id, A, holders[0])
    assert (await store.take_webhook_slot(made.id, A, "late:1", 2, 30)).taken


async def test_a_lapsed_slot_is_freed(store: Store) -> None:
    made = await store.create_webhook(_new())
    assert (await store.take_webhook_slot(made.id, A, "dead:1", 1, 0.2)).taken
    assert not (await store.take_webhook_slot(made.id, A, "next:1", 1, 30)).taken
    await asyncio.sleep(0.3)
    assert (await store.take_webhook_slot(made.id, A, "next:1", 1, 30)).taken


async def test_a_disabled_endpoint_gives_no_slot(store: Store) -> None:
    made = await store.create_webhook(_new(enabled=False))
    taken = await store.take_webhook_slot(made.id, A, "1:1", 4, 30)
    assert taken.webhook is not None
    assert not taken.webhook.enabled
    assert not taken.taken


async def test_text_holding_nul_is_refused(store: Store) -> None:
    with pytest.raises(DataRejected, match=r"new\.description"):
        await store.create_webhook(_new(description="a\x00b"))
