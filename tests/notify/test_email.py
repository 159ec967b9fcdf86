"""Notification email end to end: events become ``email.send`` jobs
(:class:`~conveyor.notify.email.EmailDispatch`), a real :class:`conveyor.Worker` runs them,
and a real SMTP server (aiosmtpd on loopback) receives the mail; without an SMTP host the
mail is written to the log. On both stores."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

import conveyor
from conveyor.notify.email import KIND, QUEUE, EmailDispatch, email_kind_spec, register
from conveyor.store.accounts import Role
from conveyor.store.base import Store
from conveyor.store.records import Event, EventType, Job, JobState

PUBLIC_URL = "https://conveyor.example.com"
FAST_RETRY = conveyor.Backoff(base=0.05, factor=1.0, cap=0.05, jitter=False)
WORKER = conveyor.WorkerConfig(
    queues={QUEUE: 4}, safety_poll_interval=0.05, lease_s=5.0, heartbeat_interval=1.0
)


@dataclass
class Inbox:
    """What the SMTP server received, and the replies it gives first (``"451 ..."``)."""

    replies: list[str] = field(default_factory=list)
    received: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.replies:
            return self.replies.pop(0)
        assert isinstance(envelope.content, bytes)
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append((envelope, parsed))
        self.arrived.set()
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """An SMTP server on a free loopback port: its inbox and port."""
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _settings(port: int | None) -> conveyor.Settings:
    values: dict[str, Any] = {"public_url": PUBLIC_URL, "smtp_timeout": 5.0}
    if port is not None:
        values |= {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"}
    return conveyor.Settings(**values)


@dataclass
class Tenant:
    id: str
    owner: str
    member: str


async def _tenant(store: Store) -> Tenant:
    tenant, owner = await store.signup("acme", "Acme", "usr_owner", "owner@acme.example", "h")
    member = await store.create_user("usr_dev", "dev@acme.example", "h")
    await store.add_member(tenant.id, member.id, Role.MEMBER)
    return Tenant(tenant.id, owner.id, member.id)


def _event(tenant_id: str, type_: EventType, **over: Any) -> Event:
    fields: dict[str, Any] = {
        "id": 1,
        "tenant_id": tenant_id,
        "type": type_,
        "job_id": 7,
        "kind": "asset.generate",
        "queue": "default",
        "attempt": 1,
        "body": {},
        "at": time.time(),
        "request_id": 42,
    }
    fields.update(over)
    return Event(**fields)


@pytest.fixture
async def running(store: Store) -> AsyncIterator[Any]:
    """``await running(settings)``: a worker serving ``email.send`` on ``store`` (with a
    short retry backoff), stopped at the end of the test."""
    tasks: list[tuple[conveyor.Worker, asyncio.Task[None]]] = []

    async def start(settings: conveyor.Settings) -> conveyor.Worker:
        kinds = conveyor.Registry()
        register(kinds, store, settings, backoff=FAST_RETRY)
        worker = conveyor.Worker(store, WORKER, kinds=kinds)
        tasks.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, task in tasks:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def _finished(store: Store, job_id: int) -> Job:
    deadline = time.monotonic() + 10
    while True:
        job = await store.get_job(job_id)
        assert job is not None
        if job.state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.02)


async def _dispatch(store: Store, settings: conveyor.Settings, events: list[Event]) -> list[int]:
    jobs = await EmailDispatch(store, settings).jobs_for(events)
    return [e.id for e in await store.enqueue(jobs)]


async def _choose(store: Store, tenant: Tenant, user_id: str, *types: EventType) -> str:
    """Set ``user_id``'s preferences to ``types`` of every kind; their unsubscribe token."""
    await store.set_email_preferences(tenant.id, user_id, event_types=types, kinds=[], enabled=True)
    (contact,) = [c for c in await store.email_contacts(tenant.id) if c.user_id == user_id]
    assert contact.unsubscribe_token is not None
    return contact.unsubscribe_token


async def test_the_completion_email_reaches_the_smtp_server(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    settings = _settings(port)
    tenant = await _tenant(store)
    token = await _choose(store, tenant, tenant.member, EventType.COMPLETED, EventType.FAILED)
    await running(settings)

    (job_id,) = await _dispatch(store, settings, [_event(tenant.id, EventType.COMPLETED)])
    job = await _finished(store, job_id)

    assert job.state is JobState.COMPLETED, job.errors
    assert job.kind == KIND
    assert job.tenant_id == tenant.id
    ((envelope, mail),) = inbox.received
    assert envelope.rcpt_tos == ["dev@acme.example"]
    assert mail["To"] == "dev@acme.example"
    assert mail["Subject"] == "[Conveyor] asset.generate completed (request 42)"
    unsubscribe = f"{PUBLIC_URL}/v1/email/unsubscribe?token={token}"
    assert mail["List-Unsubscribe"] == f"<{unsubscribe}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert f"{PUBLIC_URL}/v1/requests/42" in text.get_content()
    assert f'href="{PUBLIC_URL}/v1/requests/42"' in html.get_content()
    assert job.result == {"sent": ["dev@acme.example"]}


async def test_a_failure_email_tells_the_error_and_escapes_it_in_html(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    settings = _settings(port)
    tenant = await _tenant(store)
    await _choose(store, tenant, tenant.owner, EventType.FAILED)
    await running(settings)
    error = {"type": "ValueError", "message": "<script>x</script> is no colour"}
    failed = _event(tenant.id, EventType.FAILED, request_id=None, job_id=9, body={"error": error})

    (job_id,) = await _dispatch(store, settings, [failed])
    assert (await _finished(store, job_id)).state is JobState.COMPLETED

    ((envelope, mail),) = inbox.received
    assert envelope.rcpt_tos == ["owner@acme.example"]
    assert mail["Subject"] == "[Conveyor] asset.generate failed (job 9)"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "<script>x</script> is no colour" in text.get_content()
    assert f"{PUBLIC_URL}/v1/jobs/9" in text.get_content()
    assert "&lt;script&gt;x&lt;/script&gt;" in html.get_content()
    assert "<script>" not in html.get_content()


async def test_dispatch_makes_one_job_per_event_and_chosen_member(
    store: Store, smtp: tuple[Inbox, int]
) -> None:
    settings = _settings(smtp[1])
    tenant = await _tenant(store)
    await _choose(store, tenant, tenant.owner, EventType.COMPLETED)
    await store.set_email_preferences(
        tenant.id,
        tenant.member,
        event_types=[EventType.FAILED],
        kinds=["video.process"],
        enabled=True,
    )
    other, other_owner = await store.signup("beta", "Beta", "usr_beta", "b@beta.example", "h")
    events = [
        _event(tenant.id, EventType.COMPLETED, id=1),
        _event(tenant.id, EventType.FAILED, id=2),  # asset.generate: not the member's kind
        _event(tenant.id, EventType.FAILED, id=3, kind="video.process"),
        _event(tenant.id, EventType.STARTED, id=None),  # live: emails nobody
        _event(tenant.id, EventType.COMPLETED, id=4, kind=KIND, queue=QUEUE),  # a mail's own
        _event(other.id, EventType.COMPLETED, id=5),  # nobody in beta chose anything
    ]

    jobs = await EmailDispatch(store, settings).jobs_for(events)

    sent = sorted(
        (job.payload["context"]["event_id"], job.payload["recipients"]["user_ids"][0])
        for job in jobs
    )
    assert sent == [(1, tenant.owner), (3, tenant.member)]
    for job in jobs:
        assert (job.kind, job.queue, job.tenant_id) == (KIND, QUEUE, tenant.id)
        assert job.payload["template"] == "job_event"
    assert await EmailDispatch(store, settings).jobs_for([]) == []
    assert other_owner.id == "usr_beta"


async def test_a_temporary_smtp_failure_is_retried(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    inbox.replies.append("451 4.3.0 try again later")
    settings = _settings(port)
    tenant = await _tenant(store)
    await _choose(store, tenant, tenant.owner, EventType.COMPLETED)
    await running(settings)

    (job_id,) = await _dispatch(store, settings, [_event(tenant.id, EventType.COMPLETED)])
    job = await _finished(store, job_id)

    assert job.state is JobState.COMPLETED
    assert job.attempt == 2
    (error,) = job.errors
    assert "451" in error.message
    assert "127.0.0.1" in error.message
    assert len(inbox.received) == 1


async def test_a_permanent_smtp_refusal_fails_at_once(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    inbox.replies.append("554 5.7.1 message refused")
    settings = _settings(port)
    tenant = await _tenant(store)
    await _choose(store, tenant, tenant.owner, EventType.COMPLETED)
    await running(settings)

    (job_id,) = await _dispatch(store, settings, [_event(tenant.id, EventType.COMPLETED)])
    job = await _finished(store, job_id)

    assert job.state is JobState.FAILED
    assert job.attempt == 1
    assert "554" in job.errors[-1].message
    assert inbox.received == []


async def test_without_an_smtp_host_the_mail_is_written_to_the_log(
    store: Store, running: Any
) -> None:
    settings = _settings(None)
    tenant = await _tenant(store)
    await _choose(store, tenant, tenant.owner, EventType.COMPLETED)
    await running(settings)

    with structlog.testing.capture_logs() as logs:
        (job_id,) = await _dispatch(store, settings, [_event(tenant.id, EventType.COMPLETED)])
        job = await _finished(store, job_id)

    assert job.state is JobState.COMPLETED, job.errors
    (logged,) = [
        entry for entry in logs if entry.get("to") == "owner@acme.example" and "subject" in entry
    ]
    assert logged["subject"] == "[Conveyor] asset.generate completed (request 42)"
    assert f"{PUBLIC_URL}/v1/requests/42" in logged["text"]


async def test_members_who_unsubscribed_get_nothing(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    settings = _settings(port)
    tenant = await _tenant(store)
    token = await _choose(store, tenant, tenant.member, EventType.COMPLETED)
    (job_id,) = await _dispatch(store, settings, [_event(tenant.id, EventType.COMPLETED)])
    # Unsubscribed after the job was made, before it ran: nothing is sent.
    assert await store.unsubscribe_email(token) is not None
    await running(settings)

    job = await _finished(store, job_id)

    assert job.state is JobState.COMPLETED
    assert job.result == {"sent": []}
    assert inbox.received == []


async def test_the_webhook_disabled_mail_reaches_every_owner(
    store: Store, smtp: tuple[Inbox, int], running: Any
) -> None:
    inbox, port = smtp
    settings = _settings(port)
    tenant = await _tenant(store)
    second = await store.create_user("usr_o2", "o2@acme.example", "h")
    await store.add_member(tenant.id, second.id, Role.OWNER)
    await running(settings)
    payload = {
        "template": "webhook_disabled",
        "recipients": {"owners": True},
        "context": {
            "webhook_id": 3,
            "url": "https://hooks.example/in",
            "failures": 20,
            "last_error": "HTTP 500",
        },
    }

    (enqueued,) = await store.enqueue(
        [email_kind_spec(settings).new_job(payload, tenant_id=tenant.id)]
    )
    job = await _finished(store, enqueued.id)

    assert job.state is JobState.COMPLETED, job.errors
    to = sorted(envelope.rcpt_tos[0] for envelope, _ in inbox.received)
    assert to == ["o2@acme.example", "owner@acme.example"]
    _, mail = inbox.received[0]
    assert mail["Subject"] == "[Conveyor] webhook 3 disabled after 20 failed deliveries"
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    assert f"{PUBLIC_URL}/v1/webhooks/3" in text.get_content()
    assert mail["List-Unsubscribe"] is None  # the owners never set preferences


async def test_a_payload_that_breaks_the_contract_is_refused_at_enqueue(store: Store) -> None:
    kinds = conveyor.Registry()
    register(kinds, store, _settings(None))
    kind = kinds.get(KIND)
    with pytest.raises(conveyor.InvalidJob, match="exactly one of"):
        kind.new_job({"template": "job_event", "recipients": {}, "context": {}})
    with pytest.raises(conveyor.InvalidJob, match=r"context\.webhook_id"):
        kind.new_job(
            {"template": "webhook_disabled", "recipients": {"owners": True}, "context": {}}
        )
    with pytest.raises(conveyor.InvalidJob, match="not an email address"):
        kind.new_job(
            {
                "template": "webhook_disabled",
                "recipients": {"addresses": ["a@b.example, c@d.example"]},
                "context": {"webhook_id": 1, "url": "u", "failures": 1, "last_error": "e"},
            }
        )
