"""Webhook endpoints and their deliveries as the stores keep them.

The records are what a store reads back; :class:`WebhookStore` is the verbs, each one
transaction, each scoped by the tenant it names (the API's PostgreSQL store runs it as
``conveyor_api`` in that tenant's scope, so row security holds it to the tenant's rows).
Secrets are kept as given: they sign, so they must be read back (docs/security.md).
Times are Unix seconds from the store's clock.

A per-endpoint concurrency cap holds across every worker through slot rows
(``conveyor_webhook_slots``): a delivery takes one before it sends and gives it back
after; a slot whose holder died lapses at its ``lease_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor.store.records import JSON


@dataclass(frozen=True, slots=True)
class Webhook:
    """One endpoint of a tenant: where its events are posted and with which secret."""

    id: int
    tenant_id: str
    url: str
    event_types: tuple[str, ...]
    """Event type values (``job.completed``) or ``*`` for every type."""
    description: str
    enabled: bool
    secret: str
    """``whsec_`` + base64 of the key bytes (the Standard Webhooks form)."""
    previous_secret: str | None
    """The secret before the last rotation; it signs too until ``previous_expires_at``."""
    previous_expires_at: float | None
    consecutive_failures: int
    disabled_reason: str | None
    """Why the endpoint was disabled by failures (None: enabled, or disabled by a user)."""
    created_at: float
    updated_at: float

    def subscribed(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this endpoint."""
        return "*" in self.event_types or event_type in self.event_types

    def secrets(self, now: float) -> tuple[str, ...]:
        """The secrets that sign a message sent at ``now``: the current one, and the
        previous one during a rotation's grace period."""
        if self.previous_secret is not None and (self.previous_expires_at or 0.0) > now:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """What creating an endpoint takes."""

    tenant_id: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    description: str = ""
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class WebhookChange:
    """What changing an endpoint takes; None leaves a field as it is. Enabling an
    endpoint clears its failures and the reason it was disabled."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    description: str | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One attempt to deliver one message (an event, or a test ping: ``event_id`` None)
    to one endpoint. ``message_id`` is the ``webhook-id`` header, the same on every
    attempt of a message."""

    id: int
    tenant_id: str
    webhook_id: int
    message_id: str
    event_id: int | None
    event_type: str
    job_id: int | None
    """The delivery job's id."""
    attempt: int
    status_code: int | None
    """None: no answer (refused, unreachable, timed out)."""
    latency_ms: float | None
    response_excerpt: str | None
    error: str | None
    payload: dict[str, Any]
    """The body that was sent (``{"type", "timestamp", "data"}``)."""
    created_at: float


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """What recording a delivery attempt takes (see :class:`WebhookDelivery`)."""

    tenant_id: str
    webhook_id: int
    message_id: str
    event_id: int | None
    event_type: str
    job_id: int | None
    attempt: int
    status_code: int | None
    latency_ms: float | None
    response_excerpt: str | None
    error: str | None
    payload: dict[str, JSON]
    succeeded: bool
    """A 2xx: the endpoint's consecutive failures go back to 0; else they count one more."""


@dataclass(frozen=True, slots=True)
class DeliveryRecorded:
    """What recording a delivery did: the row and the endpoint after it (both None: the
    endpoint was deleted meanwhile, and nothing was recorded), and whether this attempt is
    the one that disabled it."""

    delivery: WebhookDelivery | None
    webhook: Webhook | None
    disabled_now: bool


@dataclass(frozen=True, slots=True)
class SlotTaken:
    """The answer to :meth:`WebhookStore.take_webhook_slot`: the endpoint as it is now
    (None: deleted) and whether a slot was taken (never for a disabled endpoint)."""

    webhook: Webhook | None
    taken: bool


def disabled_reason(failures: int, error: str | None) -> str:
    """Why an endpoint was disabled after ``failures`` failed deliveries in a row."""
    return f"disabled after {failures} consecutive failed deliveries; last: {error or 'no 2xx'}"


def delivery_values(
    new: NewDelivery, disable_after: int, payload: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters of recording ``new`` (its row, with ``payload`` the JSON text the
    store's driver takes) and of counting it against its endpoint: both stores' one
    source of them."""
    keys = {"webhook_id": new.webhook_id, "tenant_id": new.tenant_id}
    row = {
        **keys,
        "message_id": new.message_id,
        "event_id": new.event_id,
        "event_type": new.event_type,
        "job_id": new.job_id,
        "attempt": new.attempt,
        "status_code": new.status_code,
        "latency_ms": new.latency_ms,
        "response_excerpt": new.response_excerpt,
        "error": new.error,
        "payload": payload,
    }
    count = {
        **keys,
        "succeeded": new.succeeded,
        "disable_after": disable_after,
        "reason": disabled_reason(disable_after, new.error),
    }
    return row, count


class WebhookStore(Protocol):
    """Webhook endpoints, their delivery log and their delivery slots. Each method is one
    transaction; every one names its tenant, and another tenant's ids are not found.
    Text holding NUL is refused with :class:`~conveyor.store.base.DataRejected`."""

    async def create_webhook(self, new: NewWebhook) -> Webhook:
        """A new endpoint of ``new.tenant_id``."""

    async def get_webhook(self, webhook_id: int, tenant_id: str) -> Webhook | None: ...

    async def list_webhooks(
        self, tenant_id: str, before_id: int | None = None, limit: int = 100
    ) -> list[Webhook]:
        """The tenant's endpoints, newest first, with ids below ``before_id`` if given."""

    async def update_webhook(
        self, webhook_id: int, tenant_id: str, change: WebhookChange
    ) -> Webhook | None:
        """The endpoint after ``change``; None if the tenant has no such endpoint."""

    async def delete_webhook(self, webhook_id: int, tenant_id: str) -> bool:
        """Delete the endpoint and its delivery log; False if there was none."""

    async def rotate_webhook_secret(
        self, webhook_id: int, tenant_id: str, secret: str, grace_s: float
    ) -> Webhook | None:
        """Make ``secret`` the endpoint's; the one it replaces still signs for
        ``grace_s`` seconds. None if the tenant has no such endpoint."""

    async def webhooks_for_tenants(self, tenant_ids: Sequence[str]) -> list[Webhook]:
        """The enabled endpoints of every tenant named, in one statement (the
        dispatcher's look-up for a batch of events of several tenants)."""

    async def record_delivery(
        self, new: NewDelivery, disable_after: int, *, release: str | None = None
    ) -> DeliveryRecorded:
        """Append the attempt to the log and count it against the endpoint: a success
        resets its consecutive failures, a failure adds one, and the failure that makes
        them ``disable_after`` disables it (``disabled_reason`` says why). Nothing is
        recorded for an endpoint deleted meanwhile. With ``release``, that holder's slot
        is given back in the same transaction (one commit fewer per delivery)."""

    async def list_deliveries(
        self, webhook_id: int, tenant_id: str, before_id: int | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        """The endpoint's delivery attempts, newest first."""

    async def get_delivery(
        self, delivery_id: int, webhook_id: int, tenant_id: str
    ) -> WebhookDelivery | None: ...

    async def take_webhook_slot(
        self, webhook_id: int, tenant_id: str, holder: str, limit: int, lease_s: float
    ) -> SlotTaken:
        """Take one of the endpoint's ``limit`` delivery slots for ``holder`` (a delivery
        attempt) for ``lease_s`` seconds, unless ``limit`` live slots are held; slots past
        their lease are freed first. A holder that holds one already keeps it."""

    async def release_webhook_slot(self, webhook_id: int, tenant_id: str, holder: str) -> None:
        """Give back ``holder``'s slot (nothing if it holds none)."""
