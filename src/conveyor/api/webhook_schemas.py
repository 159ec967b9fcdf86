"""The bodies of ``/v1/webhooks``: endpoints, their deliveries, and the secret shown once
(in the answers that create an endpoint or rotate its secret, never again)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from conveyor.api.schemas import Timestamp, at_utc, utc
from conveyor.notify.webhooks import PING
from conveyor.store.webhooks import Webhook, WebhookDelivery

MAX_URL_LENGTH = 2000
MAX_DESCRIPTION = 500

EventTypeName = Literal[
    "*",
    "job.queued",
    "job.started",
    "job.progress",
    "job.retrying",
    "job.completed",
    "job.failed",
    "job.cancelled",
]
"""An :class:`~conveyor.store.records.EventType` value, or ``*`` for every type (a test
checks that the two agree)."""


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the URL must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not carry credentials (user:password@)")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"the URL's port is not valid: {exc}") from None
    return value


Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        pattern=r"^https?://[^\s]+$",
        examples=["https://hooks.example.com/conveyor"],
        description="Where events are posted: http(s), a public address unless "
        "CONVEYOR_WEBHOOK_ALLOW_HOSTS names it.",
    ),
    AfterValidator(_http_url),
]
EventTypes = Annotated[
    list[EventTypeName],
    Field(
        min_length=1,
        max_length=10,
        description='Event types sent to the endpoint, or ["*"] for all. job.started '
        "and job.progress are live only (never stored) and are not sent by webhook.",
    ),
]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION, pattern=r"^[^\x00]*$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookIn(_In):
    """A new endpoint of the caller's tenant."""

    url: Url
    event_types: EventTypes
    description: Description = ""
    enabled: bool = True


class WebhookPatch(_In):
    """Fields to change; those left out stay. Enabling a disabled endpoint clears its
    failures."""

    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    enabled: bool | None = None


class WebhookOut(BaseModel):
    """An endpoint, never with its secret."""

    id: int
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    previous_secret_expires_at: Timestamp | None
    """While the secret before the last rotation still signs."""
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookOut:
        grace = webhook.previous_expires_at if webhook.previous_secret is not None else None
        return cls(
            id=webhook.id,
            url=webhook.url,
            event_types=list(webhook.event_types),
            description=webhook.description,
            enabled=webhook.enabled,
            disabled_reason=webhook.disabled_reason,
            consecutive_failures=webhook.consecutive_failures,
            previous_secret_expires_at=utc(grace),
            created_at=at_utc(webhook.created_at),
            updated_at=at_utc(webhook.updated_at),
        )


class WebhookWithSecret(BaseModel):
    """An endpoint and its signing secret, shown only in this answer: keep it to verify
    the ``webhook-signature`` header (docs/webhooks.md)."""

    webhook: WebhookOut
    secret: str


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    """One attempt to deliver one message."""

    id: int
    webhook_id: int
    message_id: str
    """The ``webhook-id`` header, the same on every attempt of the message."""
    event_id: int | None
    event_type: str
    job_id: int | None
    attempt: int
    status_code: int | None
    latency_ms: float | None
    response_excerpt: str | None
    error: str | None
    payload: dict[str, Any]
    created_at: Timestamp

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=delivery.id,
            webhook_id=delivery.webhook_id,
            message_id=delivery.message_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            job_id=delivery.job_id,
            attempt=delivery.attempt,
            status_code=delivery.status_code,
            latency_ms=delivery.latency_ms,
            response_excerpt=delivery.response_excerpt,
            error=delivery.error,
            payload=delivery.payload,
            created_at=at_utc(delivery.created_at),
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveryQueued(BaseModel):
    """A delivery job enqueued (a test ping, or a message sent again)."""

    job_id: int
    message_id: str
    event_type: str = Field(examples=[PING])
