"""``/v1/webhooks``: the tenant's webhook endpoints and their delivery log (``ADMIN``).

The signing secret is made here and shown once, in the answer that creates the endpoint
or rotates its secret. A URL that resolves to an address the SSRF guard refuses answers
422 with the reason (every delivery checks again: :mod:`conveyor.outbound`). Deliveries
are jobs on the ``webhooks`` queue; ``/test`` and ``/deliveries/{id}/retry`` enqueue one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.exceptions import RequestValidationError

from conveyor.api.access import Access, caller_for, tenant_of
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api
from conveyor.api.errors import validation_detail
from conveyor.api.pagination import DEFAULT_LIMIT, decode_cursor, next_cursor
from conveyor.api.routes.common import (
    NOT_FOUND,
    READ_ERRORS,
    WRITE_ERRORS,
    Cursor,
    Limit,
    ResourceId,
)
from conveyor.api.state import ApiState
from conveyor.api.webhook_schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryQueued,
    WebhookIn,
    WebhookOut,
    WebhookPage,
    WebhookPatch,
    WebhookWithSecret,
)
from conveyor.notify.signing import new_secret
from conveyor.notify.webhooks import DeliveryPayload, ping_job, redelivery_job
from conveyor.outbound import AllowList, OutboundRefused, check_url
from conveyor.store.records import NewJob
from conveyor.store.webhooks import NewWebhook, Webhook, WebhookChange

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/webhooks", tags=["webhooks"], responses=READ_ERRORS
)
Admin = Annotated[Caller, Depends(caller_for(Access.ADMIN))]
Api = Annotated[ApiState, Depends(get_api)]
REFUSED_URL: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field is not valid, or the URL's host is refused."}
}


async def _check_url(api: ApiState, url: str) -> None:
    """422 at ``body.url`` when the guard would refuse to call ``url`` now."""
    try:
        await check_url(url, AllowList.parse(api.settings.webhook_allow_hosts))
    except OutboundRefused as exc:
        raise RequestValidationError(validation_detail(exc.reason, loc=("body", "url"))) from None


async def _find(api: ApiState, caller: Caller, webhook_id: int) -> Webhook:
    webhook = await api.client.store.get_webhook(webhook_id, tenant_of(caller))
    if webhook is None:
        raise HTTPException(404, f"no webhook with id {webhook_id}")
    return webhook


async def _enqueue(api: ApiState, job: NewJob) -> DeliveryQueued:
    (enqueued,) = await api.client.store.enqueue([job])
    payload = DeliveryPayload.model_validate(job.payload)
    return DeliveryQueued(
        job_id=enqueued.id, message_id=payload.message_id, event_type=payload.event_type
    )


@router.post(
    "", status_code=201, responses={**WRITE_ERRORS, **REFUSED_URL}, summary="Add a webhook"
)
async def create_webhook(body: WebhookIn, caller: Admin, api: Api) -> WebhookWithSecret:
    """A new endpoint for the tenant's events of ``event_types``. ``secret`` signs every
    delivery (Standard Webhooks) and is shown only now."""
    tenant_id = tenant_of(caller)
    await _check_url(api, body.url)
    secret = new_secret()
    webhook = await api.client.store.create_webhook(
        NewWebhook(
            tenant_id=tenant_id,
            url=body.url,
            event_types=tuple(dict.fromkeys(body.event_types)),
            secret=secret,
            description=body.description,
            enabled=body.enabled,
        )
    )
    return WebhookWithSecret(webhook=WebhookOut.of(webhook), secret=secret)


@router.get("", summary="List the tenant's webhooks")
async def list_webhooks(
    caller: Admin, api: Api, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> WebhookPage:
    """The tenant's endpoints, newest first; follow ``next_cursor`` for more."""
    rows = await api.client.store.list_webhooks(
        tenant_of(caller), before_id=decode_cursor(cursor), limit=limit + 1
    )
    return WebhookPage(
        items=[WebhookOut.of(w) for w in rows[:limit]],
        next_cursor=next_cursor([w.id for w in rows], limit),
    )


@router.get("/{webhook_id}", responses=NOT_FOUND, summary="Show a webhook")
async def get_webhook(webhook_id: ResourceId, caller: Admin, api: Api) -> WebhookOut:
    """One endpoint (never its secret)."""
    return WebhookOut.of(await _find(api, caller, webhook_id))


@router.patch(
    "/{webhook_id}",
    responses={**WRITE_ERRORS, **NOT_FOUND, **REFUSED_URL},
    summary="Change a webhook",
)
async def update_webhook(
    webhook_id: ResourceId, body: WebhookPatch, caller: Admin, api: Api
) -> WebhookOut:
    """Change the fields given. ``enabled: true`` turns a disabled endpoint on again,
    its failures cleared."""
    if body.url is not None:
        await _check_url(api, body.url)
    change = WebhookChange(
        url=body.url,
        event_types=None if body.event_types is None else tuple(dict.fromkeys(body.event_types)),
        description=body.description,
        enabled=body.enabled,
    )
    webhook = await api.client.store.update_webhook(webhook_id, tenant_of(caller), change)
    if webhook is None:
        raise HTTPException(404, f"no webhook with id {webhook_id}")
    return WebhookOut.of(webhook)


@router.delete("/{webhook_id}", status_code=204, responses=NOT_FOUND, summary="Delete a webhook")
async def delete_webhook(webhook_id: ResourceId, caller: Admin, api: Api) -> Response:
    """The endpoint and its delivery log; deliveries still pending end without sending."""
    if not await api.client.store.delete_webhook(webhook_id, tenant_of(caller)):
        raise HTTPException(404, f"no webhook with id {webhook_id}")
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret",
    responses={**WRITE_ERRORS, **NOT_FOUND},
    summary="Rotate a webhook's secret",
)
async def rotate_secret(webhook_id: ResourceId, caller: Admin, api: Api) -> WebhookWithSecret:
    """A new secret, shown only now. The one it replaces keeps signing (both signatures
    sent) for ``CONVEYOR_WEBHOOK_SECRET_GRACE_SECONDS``, while receivers switch."""
    secret = new_secret()
    webhook = await api.client.store.rotate_webhook_secret(
        webhook_id, tenant_of(caller), secret, api.settings.webhook_secret_grace_seconds
    )
    if webhook is None:
        raise HTTPException(404, f"no webhook with id {webhook_id}")
    return WebhookWithSecret(webhook=WebhookOut.of(webhook), secret=secret)


@router.get("/{webhook_id}/deliveries", responses=NOT_FOUND, summary="List a webhook's deliveries")
async def list_deliveries(
    webhook_id: ResourceId,
    caller: Admin,
    api: Api,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> DeliveryPage:
    """Every attempt, newest first: time, event, status code, latency, the answer's start,
    attempt, error."""
    webhook = await _find(api, caller, webhook_id)
    rows = await api.client.store.list_deliveries(
        webhook.id, webhook.tenant_id, before_id=decode_cursor(cursor), limit=limit + 1
    )
    return DeliveryPage(
        items=[DeliveryOut.of(d) for d in rows[:limit]],
        next_cursor=next_cursor([d.id for d in rows], limit),
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    responses={**WRITE_ERRORS, **NOT_FOUND},
    summary="Send a delivery's message again",
)
async def retry_delivery(
    webhook_id: ResourceId, delivery_id: ResourceId, caller: Admin, api: Api
) -> DeliveryQueued:
    """Enqueue the message of that attempt again: the same ``webhook-id`` and body."""
    tenant_id = tenant_of(caller)
    delivery = await api.client.store.get_delivery(delivery_id, webhook_id, tenant_id)
    if delivery is None:
        raise HTTPException(404, f"webhook {webhook_id} has no delivery with id {delivery_id}")
    return await _enqueue(api, redelivery_job(api.settings, delivery))


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    responses={**WRITE_ERRORS, **NOT_FOUND},
    summary="Send a test ping",
)
async def test_webhook(webhook_id: ResourceId, caller: Admin, api: Api) -> DeliveryQueued:
    """Enqueue a ``webhook.ping`` message to the endpoint; see ``/deliveries`` for how it
    went."""
    webhook = await _find(api, caller, webhook_id)
    return await _enqueue(api, ping_job(api.settings, webhook))
