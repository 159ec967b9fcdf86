"""Webhook endpoints, their delivery log and their delivery slots on PostgreSQL
(:class:`~conveyor.store.webhooks.WebhookStore`). Every verb runs in the scope of the
tenant it names; the dispatcher's look-up of several tenants' endpoints in an operator's."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from conveyor.store.accounts_text import refuse_nul_text_of
from conveyor.store.columns import Column, Table
from conveyor.store.postgres.accounts_statements import AccountStatements, timestamp
from conveyor.store.postgres.connection import OPERATOR, Conn, Database, Scope
from conveyor.store.postgres.enqueue import dumps
from conveyor.store.postgres.rows import time_or_none
from conveyor.store.webhooks import (
    DeliveryRecorded,
    NewDelivery,
    NewWebhook,
    SlotTaken,
    Webhook,
    WebhookChange,
    WebhookDelivery,
    WebhookStore,
    delivery_values,
)

WEBHOOKS: Table[Webhook] = Table(
    Webhook,
    (
        Column("id"),
        Column("tenant_id"),
        Column("url"),
        Column("event_types", tuple),
        Column("description"),
        Column("enabled"),
        Column("secret"),
        Column("previous_secret"),
        Column("previous_expires_at", time_or_none),
        Column("consecutive_failures"),
        Column("disabled_reason"),
        Column("created_at", timestamp),
        Column("updated_at", timestamp),
    ),
)
DELIVERIES: Table[WebhookDelivery] = Table(
    WebhookDelivery,
    (
        Column("id"),
        Column("tenant_id"),
        Column("webhook_id"),
        Column("message_id"),
        Column("event_id"),
        Column("event_type"),
        Column("job_id"),
        Column("attempt"),
        Column("status_code"),
        Column("latency_ms"),
        Column("response_excerpt"),
        Column("error"),
        Column("payload", orjson.loads),
        Column("created_at", timestamp),
    ),
)
_SQL = AccountStatements(
    "webhooks.sql", {"webhook_columns": WEBHOOKS, "delivery_columns": DELIVERIES}
)


@refuse_nul_text_of(WebhookStore)
class PostgresWebhooks:
    """The :class:`~conveyor.store.webhooks.WebhookStore` verbs of ``PostgresStore``."""

    _db: Database

    async def create_webhook(self, new: NewWebhook) -> Webhook:
        values = {
            "tenant_id": new.tenant_id,
            "url": new.url,
            "event_types": list(new.event_types),
            "description": new.description,
            "enabled": new.enabled,
            "secret": new.secret,
        }
        return await self._db.run(
            lambda conn: _SQL.inserted(conn, WEBHOOKS, "insert_webhook", values),
            Scope(new.tenant_id),
        )

    async def get_webhook(self, webhook_id: int, tenant_id: str) -> Webhook | None:
        values = {"webhook_id": webhook_id, "tenant_id": tenant_id}
        return await self._db.run(
            lambda conn: _SQL.one(conn, WEBHOOKS, "get_webhook", values), Scope(tenant_id)
        )

    async def list_webhooks(
        self, tenant_id: str, before_id: int | None = None, limit: int = 100
    ) -> list[Webhook]:
        values = {"tenant_id": tenant_id, "before_id": before_id, "limit": limit}
        return await self._db.run(
            lambda conn: _SQL.all(conn, WEBHOOKS, "list_webhooks", values), Scope(tenant_id)
        )

    async def update_webhook(
        self, webhook_id: int, tenant_id: str, change: WebhookChange
    ) -> Webhook | None:
        values = {
            "webhook_id": webhook_id,
            "tenant_id": tenant_id,
            "url": change.url,
            "event_types": None if change.event_types is None else list(change.event_types),
            "description": change.description,
            "enabled": change.enabled,
        }
        return await self._db.run(
            lambda conn: _SQL.one(conn, WEBHOOKS, "update_webhook", values), Scope(tenant_id)
        )

    async def delete_webhook(self, webhook_id: int, tenant_id: str) -> bool:
        values = {"webhook_id": webhook_id, "tenant_id": tenant_id}
        changed = await self._db.run(
            lambda conn: _SQL.changed(conn, "delete_webhook", values), Scope(tenant_id)
        )
        return changed > 0

    async def rotate_webhook_secret(
        self, webhook_id: int, tenant_id: str, secret: str, grace_s: float
    ) -> Webhook | None:
        values = {
            "webhook_id": webhook_id,
            "tenant_id": tenant_id,
            "secret": secret,
            "grace_s": float(grace_s),
        }
        return await self._db.run(
            lambda conn: _SQL.one(conn, WEBHOOKS, "rotate_webhook_secret", values),
            Scope(tenant_id),
        )

    async def webhooks_for_tenants(self, tenant_ids: Sequence[str]) -> list[Webhook]:
        if not tenant_ids:
            return []
        values = {"tenant_ids": sorted(set(tenant_ids))}
        return await self._db.run(
            lambda conn: _SQL.all(conn, WEBHOOKS, "webhooks_for_tenants", values), OPERATOR
        )

    async def record_delivery(
        self, new: NewDelivery, disable_after: int, *, release: str | None = None
    ) -> DeliveryRecorded:
        row, count = delivery_values(new, disable_after, dumps(new.payload))
        keys = {"webhook_id": new.webhook_id, "tenant_id": new.tenant_id}

        async def record(conn: Conn) -> DeliveryRecorded:
            if release is not None:
                await _SQL.changed(conn, "release_slot", {**keys, "holder": release})
            before = await _SQL.one(conn, WEBHOOKS, "lock_webhook", keys)
            if before is None:
                return DeliveryRecorded(None, None, False)
            delivery = await _SQL.inserted(conn, DELIVERIES, "insert_delivery", row)
            after = await _SQL.one(conn, WEBHOOKS, "count_delivery", count)
            disabled_now = after is not None and before.enabled and not after.enabled
            return DeliveryRecorded(delivery, after, disabled_now)

        return await self._db.transact(record, Scope(new.tenant_id))

    async def list_deliveries(
        self, webhook_id: int, tenant_id: str, before_id: int | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        values = {
            "webhook_id": webhook_id,
            "tenant_id": tenant_id,
            "before_id": before_id,
            "limit": limit,
        }
        return await self._db.run(
            lambda conn: _SQL.all(conn, DELIVERIES, "list_deliveries", values), Scope(tenant_id)
        )

    async def get_delivery(
        self, delivery_id: int, webhook_id: int, tenant_id: str
    ) -> WebhookDelivery | None:
        values = {"delivery_id": delivery_id, "webhook_id": webhook_id, "tenant_id": tenant_id}
        return await self._db.run(
            lambda conn: _SQL.one(conn, DELIVERIES, "get_delivery", values), Scope(tenant_id)
        )

    async def take_webhook_slot(
        self, webhook_id: int, tenant_id: str, holder: str, limit: int, lease_s: float
    ) -> SlotTaken:
        keys = {"webhook_id": webhook_id, "tenant_id": tenant_id}
        slot = {**keys, "holder": holder, "limit": limit, "lease_s": float(lease_s)}

        async def take(conn: Conn) -> SlotTaken:
            webhook = await _SQL.one(conn, WEBHOOKS, "lock_webhook", keys)
            if webhook is None or not webhook.enabled:
                return SlotTaken(webhook, False)
            found = await _SQL.fetchrow(conn, "take_slot", slot)
            return SlotTaken(webhook, found is not None and bool(found["taken"]))

        return await self._db.transact(take, Scope(tenant_id))

    async def release_webhook_slot(self, webhook_id: int, tenant_id: str, holder: str) -> None:
        values = {"webhook_id": webhook_id, "tenant_id": tenant_id, "holder": holder}
        await self._db.run(
            lambda conn: _SQL.changed(conn, "release_slot", values), Scope(tenant_id)
        )
