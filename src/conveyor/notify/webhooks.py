"""Webhook deliveries: each one a job of kind ``webhook.deliver`` on queue ``webhooks``.

:class:`WebhookDispatch` turns durable events into their delivery jobs (one per enabled
endpoint of the event's tenant subscribed to its type); the lead's dispatcher enqueues
them with its cursor. :func:`register` registers the kind, whose handler, per attempt:

1. waits its turn among this process's deliveries to the endpoint (at most
   ``webhook_endpoint_concurrency`` go on at once; a few times that many wait, for up to
   ``webhook_timeout``), then takes one of the endpoint's delivery slots (held across all
   workers in the store). A deleted or disabled endpoint ends the job without sending.
   No turn or no free slot: the job ends and a successor is enqueued a moment later that
   carries the attempts made so far, so waiting for a slot costs no attempt (the engine
   has no snooze). The turns keep a backlog for one endpoint flowing through its slots
   without a successor job per delivery (that churn held one worker to about 25
   deliveries a second); the slots hold the cap across processes.
2. signs the body (:mod:`conveyor.notify.signing`) and posts it through
   :class:`~conveyor.outbound.OutboundClient` (the SSRF guard, ``webhook_timeout`` in
   all, ``webhook_response_bytes`` read at most), then gives the slot back.
3. appends a delivery row. A 2xx resets the endpoint's consecutive failures; anything
   else counts one more and raises, so the engine retries with :data:`BACKOFF` until
   ``webhook_max_attempts``. The failure that reaches ``webhook_disable_after`` disables
   the endpoint and enqueues an ``email.send`` job to the tenant's owners.

Every attempt of one message carries the same ``webhook-id`` (``msg_<event>_<endpoint>``)
so receivers can drop repeats; at-least-once means they may see one twice.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

from conveyor.config import Settings
from conveyor.engine.context import JobContext, storable_text
from conveyor.engine.errors import Discard
from conveyor.engine.kinds import Registry, job, unregistered
from conveyor.engine.retry import Backoff
from conveyor.notify.signing import signed_headers
from conveyor.outbound import OutboundClient, OutboundRefused
from conveyor.store.base import Store
from conveyor.store.records import JSON, Event, NewJob, iso_time
from conveyor.store.webhooks import NewDelivery, Webhook, WebhookDelivery

KIND = "webhook.deliver"
QUEUE = "webhooks"
PING = "webhook.ping"
"""The event type of a test message (``POST /v1/webhooks/{id}/test``)."""
EMAIL_KIND = "email.send"
EMAIL_QUEUE = "email"

BACKOFF = Backoff(base=5.0, factor=4.0, cap=6 * 3600.0)
"""Ceilings of the wait after attempt 1, 2, …: 5 s, 20 s, 80 s, 5 min, 21 min, 85 min,
then 6 h (full jitter: each wait is drawn from 0 to its ceiling)."""

RESULT_MAX_BYTES = 64 * 1024
"""A completed job's result goes in its ``job.completed`` body when its JSON is at most
this long; a longer one is read with ``GET /v1/jobs/{id}``."""

EXCERPT_CHARS = 1024
"""Characters of a receiver's answer kept in the delivery log."""

STORE_MARGIN_S = 10.0
"""Seconds a delivery job may take beyond ``webhook_timeout``: its store calls."""

SLOT_RETRY_S = (0.2, 1.0)
"""A delivery that found no free slot is due again after a random wait in this range."""
WAITERS_PER_SLOT = 25
"""Deliveries to one endpoint that wait for a turn in one process, per slot; more are put
back (each waiting one holds a worker's job slot, which other endpoints' deliveries need)."""


class _Turns:
    """One endpoint's turns in this process: who goes on, and how many wait."""

    __slots__ = ("going", "waiting")

    def __init__(self, slots: int) -> None:
        self.going = asyncio.Semaphore(slots)
        self.waiting = 0


class DeliveryPayload(BaseModel):
    """The payload of a ``webhook.deliver`` job."""

    model_config = ConfigDict(extra="forbid")

    webhook_id: int
    message_id: str
    """The ``webhook-id`` header: the same on every attempt of the message."""
    event_type: str
    body: dict[str, Any]
    """What is posted: ``{"type", "timestamp", "data"}``."""
    event_id: int | None = None
    result_of: int | None = None
    """A job whose result is added to ``body.data.result`` when sent (job.completed)."""
    attempts_before: int = 0
    """Attempts made by the jobs this one succeeds (a delivery put back for want of a
    slot continues in a new job)."""


def job_timeout(settings: Settings) -> float:
    """The timeout of a delivery job: the call's own deadline and the store's calls."""
    return settings.webhook_timeout + STORE_MARGIN_S


def message_id(event_id: int, webhook_id: int) -> str:
    return f"msg_{event_id}_{webhook_id}"


def event_body(event: Event) -> dict[str, JSON]:
    """What is posted for ``event`` (Standard Webhooks' ``type``, ``timestamp``, ``data``)."""
    return {"type": event.type.value, "timestamp": iso_time(event.at), "data": event.to_json()}


def delivery_job(settings: Settings, tenant_id: str, payload: DeliveryPayload) -> NewJob:
    """The job that delivers ``payload``."""
    return NewJob(
        KIND,
        QUEUE,
        payload.model_dump(mode="json"),
        3,
        max(1, settings.webhook_max_attempts - payload.attempts_before),
        job_timeout(settings),
        tenant_id=tenant_id,
    )


def ping_job(settings: Settings, webhook: Webhook) -> NewJob:
    """A test message to ``webhook`` (``webhook.ping``)."""
    now = time.time()
    body: dict[str, Any] = {
        "type": PING,
        "timestamp": iso_time(now),
        "data": {"webhook_id": webhook.id, "tenant_id": webhook.tenant_id},
    }
    payload = DeliveryPayload(
        webhook_id=webhook.id,
        message_id=f"msg_ping_{secrets.token_hex(8)}",
        event_type=PING,
        body=body,
    )
    return delivery_job(settings, webhook.tenant_id, payload)


def redelivery_job(settings: Settings, delivery: WebhookDelivery) -> NewJob:
    """The message of ``delivery`` sent again (same ``webhook-id``, same body)."""
    payload = DeliveryPayload(
        webhook_id=delivery.webhook_id,
        message_id=delivery.message_id,
        event_type=delivery.event_type,
        body=delivery.payload,
        event_id=delivery.event_id,
    )
    return delivery_job(settings, delivery.tenant_id, payload)


class WebhookDispatch:
    """The delivery jobs of durable events (the dispatcher enqueues them with its cursor)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    async def jobs_for(self, events: Sequence[Event]) -> list[NewJob]:
        """One job per durable event and enabled endpoint of its tenant subscribed to its
        type, in event order; one store query for all the tenants of the batch."""
        durable = [e for e in events if e.id is not None and e.type.durable]
        if not durable:
            return []
        webhooks = await self._store.webhooks_for_tenants(sorted({e.tenant_id for e in durable}))
        by_tenant: dict[str, list[Webhook]] = {}
        for webhook in webhooks:
            by_tenant.setdefault(webhook.tenant_id, []).append(webhook)
        jobs = []
        for event in durable:
            assert event.id is not None
            for webhook in by_tenant.get(event.tenant_id, ()):
                if not webhook.subscribed(event.type.value):
                    continue
                payload = DeliveryPayload(
                    webhook_id=webhook.id,
                    message_id=message_id(event.id, webhook.id),
                    event_type=event.type.value,
                    body=event_body(event),
                    event_id=event.id,
                    result_of=event.job_id if event.type.value == "job.completed" else None,
                )
                jobs.append(delivery_job(self._settings, event.tenant_id, payload))
        return jobs


class DeliveryFailed(Exception):
    """A delivery attempt that got no 2xx (retried while attempts remain)."""


class WebhookDeliverer:
    """The handler of ``webhook.deliver``, bound to a store and settings. Its HTTP client
    is made in the event loop that first uses it; :meth:`aclose` closes it."""

    def __init__(self, store: Store, settings: Settings, registry: Registry) -> None:
        self._store = store
        self._settings = settings
        self._registry = registry
        self._client: OutboundClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turns: dict[int, _Turns] = {}

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> OutboundClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client's pooled connections belong to the loop that opened them.
            self._client = OutboundClient(
                self._settings.webhook_allow_hosts, user_agent="Conveyor-Webhooks"
            )
            self._loop = loop
        return self._client

    async def deliver(self, ctx: JobContext, payload: DeliveryPayload) -> dict[str, JSON]:
        """One attempt (see the module docstring)."""
        cap = self._settings.webhook_endpoint_concurrency
        turns = self._turns.get(payload.webhook_id)
        if turns is None:
            turns = self._turns[payload.webhook_id] = _Turns(cap)
        if turns.waiting >= cap * WAITERS_PER_SLOT:
            return await self._defer(ctx, payload)
        turns.waiting += 1
        try:
            async with asyncio.timeout(self._settings.webhook_timeout):
                await turns.going.acquire()
        except TimeoutError:
            return await self._defer(ctx, payload)
        finally:
            turns.waiting -= 1
        try:
            return await self._deliver(ctx, payload)
        finally:
            turns.going.release()
            if turns.waiting == 0 and not turns.going.locked():
                self._turns.pop(payload.webhook_id, None)

    async def _defer(self, ctx: JobContext, payload: DeliveryPayload) -> dict[str, JSON]:
        """End this job and enqueue its successor a moment later, charged nothing."""
        attempt = payload.attempts_before + ctx.attempt
        successor = payload.model_copy(update={"attempts_before": attempt - 1})
        later = delivery_job(self._settings, ctx.tenant_id, successor)
        delay = random.uniform(*SLOT_RETRY_S)
        (enqueued,) = await self._store.enqueue([_delayed(later, delay)])
        return {"deferred_to": enqueued.id, "reason": "no free delivery slot"}

    async def _deliver(self, ctx: JobContext, payload: DeliveryPayload) -> dict[str, JSON]:
        settings = self._settings
        tenant_id = ctx.tenant_id
        holder = f"{ctx.id}:{ctx.attempt}"
        slot = await self._store.take_webhook_slot(
            payload.webhook_id,
            tenant_id,
            holder,
            settings.webhook_endpoint_concurrency,
            job_timeout(settings) + STORE_MARGIN_S,
        )
        webhook = slot.webhook
        if webhook is None:
            return {"skipped": "the endpoint was deleted"}
        if not webhook.enabled:
            return {"skipped": "the endpoint is disabled"}
        attempt = payload.attempts_before + ctx.attempt
        if not slot.taken:
            return await self._defer(ctx, payload)
        try:
            body = await self._body(payload, tenant_id)
            sent = await self._send(webhook, payload.message_id, body)
        except BaseException:
            await self._store.release_webhook_slot(webhook.id, tenant_id, holder)
            raise
        status, latency_ms, excerpt, error = sent
        succeeded = status is not None and 200 <= status < 300
        recorded = await self._store.record_delivery(
            NewDelivery(
                tenant_id=tenant_id,
                webhook_id=webhook.id,
                message_id=payload.message_id,
                event_id=payload.event_id,
                event_type=payload.event_type,
                job_id=ctx.id,
                attempt=attempt,
                status_code=status,
                latency_ms=latency_ms,
                response_excerpt=excerpt,
                error=error,
                payload=orjson.loads(body),
                succeeded=succeeded,
            ),
            settings.webhook_disable_after,
            release=holder,
        )
        if succeeded:
            return {"status_code": status, "attempt": attempt}
        if recorded.disabled_now and recorded.webhook is not None:
            await self._store.enqueue([self._disabled_email(recorded.webhook, error)])
            raise Discard(f"{error}; the endpoint is now disabled")
        raise DeliveryFailed(error)

    async def _body(self, payload: DeliveryPayload, tenant_id: str) -> bytes:
        """The JSON posted: the payload's body, with the job's result for job.completed
        when it is small."""
        body = payload.body
        if payload.result_of is not None:
            done = await self._store.get_job(payload.result_of, tenant_id)
            if done is not None and done.result is not None:
                result = orjson.dumps(done.result)
                if len(result) <= RESULT_MAX_BYTES:
                    data = {**body.get("data", {}), "result": done.result}
                    body = {**body, "data": data}
        return orjson.dumps(body)

    async def _send(
        self, webhook: Webhook, message: str, body: bytes
    ) -> tuple[int | None, float | None, str | None, str | None]:
        """Post ``body``: (status code, latency in ms, answer excerpt, error)."""
        settings = self._settings
        now = time.time()
        headers = signed_headers(webhook.secrets(now), message, int(now), body)
        started = time.monotonic()
        try:
            answer = await self._http().request(
                "POST",
                webhook.url,
                headers=headers,
                content=body,
                timeout=settings.webhook_timeout,
                max_bytes=settings.webhook_response_bytes,
            )
        except OutboundRefused as exc:
            return None, None, None, storable_text(str(exc))
        except TimeoutError:
            elapsed = (time.monotonic() - started) * 1000
            return None, elapsed, None, f"no answer within {settings.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            elapsed = (time.monotonic() - started) * 1000
            return None, elapsed, None, storable_text(f"{type(exc).__name__}: {exc}")
        excerpt = storable_text(answer.body[:EXCERPT_CHARS].decode("utf-8", "replace"))
        error = None if answer.ok else f"HTTP {answer.status_code}"
        return answer.status_code, answer.elapsed_ms, excerpt, error

    def _disabled_email(self, webhook: Webhook, error: str | None) -> NewJob:
        """The mail that tells the tenant's owners their endpoint was disabled."""
        spec = self._registry.find(EMAIL_KIND) or unregistered(EMAIL_KIND)
        payload: dict[str, JSON] = {
            "template": "webhook_disabled",
            "recipients": {"owners": True},
            "context": {
                "webhook_id": webhook.id,
                "url": webhook.url,
                "failures": webhook.consecutive_failures,
                "last_error": error or "no 2xx answer",
            },
        }
        return spec.new_job(payload, queue=EMAIL_QUEUE, tenant_id=webhook.tenant_id)


def _delayed(new: NewJob, delay_s: float) -> NewJob:
    return NewJob(
        new.kind,
        new.queue,
        new.payload,
        new.priority,
        new.max_attempts,
        new.timeout_s,
        delay_s=delay_s,
        tenant_id=new.tenant_id,
    )


def register(
    registry: Registry, store: Store, settings: Settings, *, backoff: Backoff = BACKOFF
) -> WebhookDeliverer:
    """Register ``webhook.deliver`` in ``registry``, bound to ``store`` and ``settings``
    (``backoff``: the waits between attempts; tests shorten them). Returns the handler's
    owner, whose :meth:`~WebhookDeliverer.aclose` closes its HTTP client."""
    deliverer = WebhookDeliverer(store, settings, registry)
    job(
        KIND,
        queue=QUEUE,
        max_attempts=settings.webhook_max_attempts,
        timeout=job_timeout(settings),
        backoff=backoff,
        non_retryable=(),
        registry=registry,
    )(deliverer.deliver)
    return deliverer
