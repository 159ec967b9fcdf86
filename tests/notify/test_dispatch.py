"""The whole chain as worker processes run it (``conveyor.notify.service``): jobs complete,
two processes' dispatchers turn their events into webhook and email jobs, workers deliver
them: each event's webhook arrives once, signed (verified with ``standardwebhooks``), and
the member who chose completions gets one mail each, over a real SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

import pytest
import standardwebhooks
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from notify_support import eventually

import conveyor
from conveyor.notify.dispatch import CURSOR
from conveyor.notify.service import dispatching, install, with_notify_queues, worker_kinds
from conveyor.notify.signing import new_secret
from conveyor.store.accounts import Role
from conveyor.store.base import Store
from conveyor.store.records import EventType
from conveyor.store.webhooks import NewWebhook
from http_receiver import receiving

TENANT = "acme"


@dataclass
class Inbox:
    messages: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def smtp_port() -> Any:
    inbox = Inbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _settings(smtp_port: int) -> conveyor.Settings:
    return conveyor.Settings(
        webhook_allow_hosts=["127.0.0.1"],
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        public_url="https://conveyor.example.com",
        event_poll_interval=0.2,
    )


@contextlib.asynccontextmanager
async def worker_process(
    store: Store, settings: conveyor.Settings, kinds: conveyor.Registry
) -> AsyncIterator[conveyor.Worker]:
    """What ``conveyor worker`` runs on ``store``: its kinds and the delivery kinds, the
    delivery queues beside its own, the dispatcher."""
    served = worker_kinds(kinds)
    notify = install(served, store, settings)
    config = conveyor.WorkerConfig(
        queues=with_notify_queues({"default": 10}, settings),
        safety_poll_interval=0.1,
        lease_s=5.0,
        heartbeat_interval=1.0,
    )
    worker = conveyor.Worker(store, config, kinds=served)
    async with dispatching(notify):
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 15)


async def test_two_processes_deliver_each_event_once_by_webhook_and_by_mail(
    store: Store, peer_store: Store, smtp_port: Any
) -> None:
    inbox, port = smtp_port
    settings = _settings(port)
    kinds = conveyor.Registry()

    @conveyor.job("chain.work", registry=kinds)
    async def work(ctx: conveyor.JobContext, payload: Any) -> dict[str, Any]:
        return {"done": payload}

    tenant, _owner = await store.signup(TENANT, "Acme", "usr_owner", "owner@acme.example", "h")
    dev = await store.create_user("usr_dev", "dev@acme.example", "h")
    await store.add_member(tenant.id, dev.id, Role.MEMBER)
    await store.set_email_preferences(
        tenant.id, dev.id, event_types=[EventType.COMPLETED], kinds=[], enabled=True
    )
    client = conveyor.Client(store, kinds=kinds)
    # An event from before any dispatcher ran is not delivered: a dispatcher starts at
    # the end of the log.
    await client.enqueue("chain.work", {"before": True}, tenant_id=TENANT)
    async with receiving() as receiver:
        secret = new_secret()
        await store.create_webhook(
            NewWebhook(
                tenant_id=TENANT,
                url=receiver.url,
                event_types=(EventType.COMPLETED.value,),
                secret=secret,
            )
        )
        async with (
            worker_process(store, settings, kinds),
            worker_process(peer_store, settings, kinds),
        ):
            await eventually(lambda: store.event_cursor(CURSOR), timeout=10)
            jobs = [
                (await client.enqueue("chain.work", {"i": i}, tenant_id=TENANT)).id
                for i in range(5)
            ]
            await eventually(lambda: len(receiver.received) >= 6 and len(inbox.messages) >= 6)
            await asyncio.sleep(1.0)  # nothing more comes
    assert len(receiver.received) == 6
    payloads = [
        standardwebhooks.Webhook(secret).verify(r.body, r.headers) for r in receiver.received
    ]
    assert all(p["type"] == "job.completed" for p in payloads)
    delivered = sorted(p["data"]["job_id"] for p in payloads)
    # The job enqueued before ran then too: its completion came after the dispatchers.
    assert set(jobs) <= set(delivered)
    assert len(set(delivered)) == 6
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 6
    assert len(inbox.messages) == 6
    assert {m["To"] for m in inbox.messages} == {"dev@acme.example"}
    assert all("completed" in m["Subject"] for m in inbox.messages)
