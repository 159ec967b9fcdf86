"""Webhook deliveries end to end on both stores: a real ``conveyor.Worker`` runs
``webhook.deliver`` jobs against a real HTTP receiver on loopback, and every delivery is
verified with the ``standardwebhooks`` package (the specification's own library, not our
code)."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import standardwebhooks
from notify_support import Delivering, eventually, settings

from conveyor.notify.signing import new_secret
from conveyor.notify.webhooks import WebhookDispatch, ping_job
from conveyor.store.base import Store
from conveyor.store.records import (
    ClaimRequest,
    Event,
    EventType,
    JobFilter,
    JobState,
    NewJob,
    Outcome,
    OutcomeKind,
)
from conveyor.store.webhooks import NewWebhook
from http_receiver import Answer, Received, Receiver, receiving

TENANT = "tenant-hooks"


async def _endpoint(store: Store, url: str, **fields: object) -> tuple[int, str]:
    secret = new_secret()
    new = NewWebhook(
        tenant_id=TENANT,
        url=url,
        event_types=fields.pop("event_types", ("*",)),  # type: ignore[arg-type]
        secret=secret,
    )
    return (await store.create_webhook(new)).id, secret


async def _completed_job(store: Store, result: object) -> int:
    """A job of the tenant, completed with ``result`` (as a worker would leave it)."""
    [enqueued] = await store.enqueue(
        [NewJob("test.work", "default", {}, 3, 1, None, tenant_id=TENANT)]
    )
    claim = ClaimRequest("w", {"default": 1}, 30.0, kinds=("test.work",))
    result_json = orjson.dumps(result).decode()
    await store.settle_and_claim([], [], "w", claim)
    outcome = Outcome(
        enqueued.id, 1, OutcomeKind.COMPLETED, "default", result, result_json=result_json
    )
    await store.settle_and_claim([outcome], [], "w", None)
    return enqueued.id


def _event(event_id: int, job_id: int, type_: EventType = EventType.COMPLETED) -> Event:
    return Event(event_id, TENANT, type_, job_id, "test.work", "default", 1, {}, time.time())


def _verify(secret: str, request: Received) -> dict[str, object]:
    verified = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert isinstance(verified, dict)
    return verified


async def _deliver_events(store: Store, *events: Event) -> list[int]:
    jobs = await WebhookDispatch(store, settings()).jobs_for(events)
    return [e.id for e in await store.enqueue(jobs)]


async def _job_state(store: Store, job_id: int) -> JobState | None:
    job = await store.get_job(job_id)
    return None if job is None else job.state


async def test_every_delivery_verifies_with_standardwebhooks(
    store: Store, delivering: Delivering
) -> None:
    async with receiving() as receiver:
        webhook_id, secret = await _endpoint(store, f"{receiver.url}/in")
        job_id = await _completed_job(store, {"asset_url": "https://cdn.example/a.png"})
        events = [_event(7, job_id, EventType.QUEUED), _event(9, job_id)]
        await _deliver_events(store, *events)
        delivering.start(settings())
        await eventually(lambda: len(receiver.received) == 2)

    by_type = {}
    for request in receiver.received:
        body = _verify(secret, request)
        by_type[body["type"]] = (request, body)
    assert set(by_type) == {"job.queued", "job.completed"}
    request, body = by_type["job.completed"]
    assert request.headers["webhook-id"] == f"msg_9_{webhook_id}"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    data = body["data"]
    assert isinstance(data, dict)
    assert data["id"] == 9
    assert data["job_id"] == job_id
    assert data["type"] == "job.completed"
    assert data["result"] == {"asset_url": "https://cdn.example/a.png"}
    assert "result" not in by_type["job.queued"][1]["data"]  # type: ignore[operator]


async def test_a_failing_receiver_sees_retries_then_success(
    store: Store, delivering: Delivering
) -> None:
    def flaky(request: Received) -> Answer:
        return Answer(500, b"down") if len(receiver.received) <= 2 else Answer(200)

    receiver = Receiver(flaky)
    await receiver.start()
    try:
        webhook_id, secret = await _endpoint(store, receiver.url)
        [job] = await _deliver_events(store, _event(11, 1, EventType.FAILED))
        delivering.start(settings())
        await eventually(lambda: _completed(store, job))
    finally:
        await receiver.stop()

    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_11_{webhook_id}"}
    for request in receiver.received:
        _verify(secret, request)
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    # QUICK_RETRY without jitter: 0.3 s, then 0.6 s.
    assert gaps[0] >= 0.25
    assert gaps[1] >= 0.55
    log = await store.list_deliveries(webhook_id, TENANT)
    assert [(d.attempt, d.status_code) for d in log] == [(3, 200), (2, 500), (1, 500)]
    assert log[1].error == "HTTP 500"
    assert log[1].response_excerpt == "down"
    assert all(d.latency_ms is not None and d.event_id == 11 for d in log)
    webhook = await store.get_webhook(webhook_id, TENANT)
    assert webhook is not None
    assert webhook.consecutive_failures == 0


async def _completed(store: Store, job_id: int) -> bool:
    return await _job_state(store, job_id) == JobState.COMPLETED


async def test_loopback_is_refused_at_delivery_without_the_allow_list(
    store: Store, delivering: Delivering
) -> None:
    async with receiving() as receiver:
        webhook_id, _ = await _endpoint(store, receiver.url)
        await _deliver_events(store, _event(3, 1))
        delivering.start(settings(webhook_allow_hosts=[], webhook_max_attempts=1))
        [delivery] = await eventually(lambda: store.list_deliveries(webhook_id, TENANT))
    assert receiver.received == []
    assert delivery.status_code is None
    assert delivery.error is not None
    assert "loopback" in delivery.error
    assert "CONVEYOR_WEBHOOK_ALLOW_HOSTS" in delivery.error


async def test_a_redirect_to_loopback_is_refused(store: Store, delivering: Delivering) -> None:
    def moved(request: Received) -> Answer:
        return Answer(307, b"", {"Location": "http://127.0.0.2:9/internal"})

    async with receiving(moved) as receiver:
        webhook_id, _ = await _endpoint(store, receiver.url)
        await _deliver_events(store, _event(4, 1))
        delivering.start(settings(webhook_max_attempts=1))
        [delivery] = await eventually(lambda: store.list_deliveries(webhook_id, TENANT))
    assert len(receiver.received) == 1
    assert delivery.error is not None
    assert "127.0.0.2" in delivery.error
    assert "loopback" in delivery.error


async def test_both_secrets_sign_during_the_rotation_grace(
    store: Store, delivering: Delivering
) -> None:
    async with receiving() as receiver:
        webhook_id, old = await _endpoint(store, receiver.url)
        new = new_secret()
        rotated = await store.rotate_webhook_secret(webhook_id, TENANT, new, 3600)
        assert rotated is not None
        await store.enqueue([ping_job(settings(), rotated)])
        delivering.start(settings())
        [request] = await eventually(lambda: receiver.received)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert _verify(old, request)["type"] == "webhook.ping"
    assert _verify(new, request)["type"] == "webhook.ping"


async def test_after_n_failures_the_endpoint_is_disabled_and_the_owners_emailed(
    store: Store, delivering: Delivering
) -> None:
    async with receiving(lambda r: Answer(503, b"maintenance")) as receiver:
        webhook_id, _ = await _endpoint(store, receiver.url, event_types=("job.failed",))
        [first, second] = await _deliver_events(
            store, _event(21, 1, EventType.FAILED), _event(22, 2, EventType.FAILED)
        )
        delivering.start(settings(webhook_disable_after=2, webhook_max_attempts=5))
        emails = await eventually(lambda: store.list_jobs(JobFilter(kind="email.send")))
        await asyncio.sleep(0.5)
    [email] = emails
    assert email.queue == "email"
    assert email.tenant_id == TENANT
    assert email.payload == {
        "template": "webhook_disabled",
        "recipients": {"owners": True},
        "context": {
            "webhook_id": webhook_id,
            "url": receiver.url,
            "failures": 2,
            "last_error": "HTTP 503",
        },
    }
    webhook = await store.get_webhook(webhook_id, TENANT)
    assert webhook is not None
    assert not webhook.enabled
    assert webhook.disabled_reason is not None
    assert "HTTP 503" in webhook.disabled_reason
    # The two deliveries sent twice in all; what was pending ended without sending.
    assert len(receiver.received) == 2
    states = {await _job_state(store, first), await _job_state(store, second)}
    assert JobState.FAILED in states
    assert states <= {JobState.FAILED, JobState.COMPLETED}
    assert await WebhookDispatch(store, settings()).jobs_for([_event(23, 3)]) == []


async def test_the_endpoint_concurrency_cap_holds(store: Store, delivering: Delivering) -> None:
    # Each answer takes 0.4 s; with one slot the next request cannot start before it.
    async with receiving(lambda r: Answer(delay=0.4)) as receiver:
        webhook_id, _ = await _endpoint(store, receiver.url)
        await _deliver_events(store, *(_event(30 + n, 1) for n in range(4)))
        delivering.start(settings(webhook_endpoint_concurrency=1))
        await eventually(lambda: len(receiver.received) == 4, timeout=15)
        await eventually(lambda: _logged(store, webhook_id, 4))
    starts = sorted(r.at for r in receiver.received)
    assert all(b - a >= 0.38 for a, b in itertools.pairwise(starts)), starts
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 4
    log = await store.list_deliveries(webhook_id, TENANT)
    # Waiting for the slot cost no attempt.
    assert sorted(d.attempt for d in log) == [1, 1, 1, 1]


async def _logged(store: Store, webhook_id: int, n: int) -> bool:
    return len(await store.list_deliveries(webhook_id, TENANT)) >= n


async def test_a_deleted_endpoints_deliveries_end_without_sending(
    store: Store, delivering: Delivering
) -> None:
    async with receiving() as receiver:
        webhook_id, _ = await _endpoint(store, receiver.url)
        [job] = await _deliver_events(store, _event(40, 1))
        assert await store.delete_webhook(webhook_id, TENANT)
        delivering.start(settings())
        await eventually(lambda: _completed(store, job))
    assert receiver.received == []
    done = await store.get_job(job)
    assert done is not None
    assert done.result == {"skipped": "the endpoint was deleted"}
