"""The job kind ``email.send`` (queue ``email``): renders its payload's template for each
recipient and sends it. It retries with backoff after a temporary failure (a 4xx reply, a
connection that failed or timed out); a permanent refusal (5xx) fails the job at once
(:class:`conveyor.Discard`), since sending it again would be refused again.

Members are looked up when the mail is sent, not when the job was enqueued: a member who
unsubscribed meanwhile gets nothing, and each gets their own unsubscribe link. Each
recipient gets a message of their own; a job for several (a tenant's owners) that fails
part-way sends again to those before on its retry (the dispatcher makes one job per
recipient, so its mails never do).
"""

from __future__ import annotations

import conveyor
from conveyor.config import Settings
from conveyor.engine.kinds import KindSpec, Registry
from conveyor.notify.email.payload import EmailJob
from conveyor.notify.email.render import message, render, unsubscribe_url
from conveyor.notify.email.sender import PermanentRefusal, Sender, sender_from
from conveyor.store.accounts import Role
from conveyor.store.email_preferences import EmailPreferenceStore

KIND = "email.send"
QUEUE = "email"
MAX_ATTEMPTS = 8
"""With the default backoff (5 s doubling, full jitter), tries over up to about ten
minutes: an SMTP server's restart or a greylisting delay is waited out."""
COMMANDS_PER_MESSAGE = 4
"""An attempt's timeout is this many times ``smtp_timeout``: aiosmtplib applies the
timeout to each command (connect, EHLO, STARTTLS, DATA...)."""


def email_kind_spec(settings: Settings) -> KindSpec:
    """The options an ``email.send`` job starts with (the dispatcher builds its jobs from
    them without the kind being registered in its process)."""
    return KindSpec(
        KIND,
        queue=QUEUE,
        max_attempts=MAX_ATTEMPTS,
        timeout=settings.smtp_timeout * COMMANDS_PER_MESSAGE,
    )


def register(
    registry: Registry,
    store: EmailPreferenceStore,
    settings: Settings,
    *,
    backoff: conveyor.Backoff | None = None,
) -> None:
    """Register ``email.send`` in ``registry``, sending over SMTP from ``settings`` (or
    to the log without ``smtp_host``) and reading members from ``store``. A no-op when
    the registry already has the kind. ``backoff``: the delay between attempts (default
    :class:`conveyor.Backoff`'s)."""
    if KIND in registry:
        return
    spec = email_kind_spec(settings)
    mail = _Mail(store, settings, sender_from(settings))
    conveyor.job(
        KIND,
        queue=spec.queue,
        max_attempts=spec.max_attempts,
        timeout=spec.timeout,
        backoff=backoff,
        registry=registry,
    )(mail.send)


class _Mail:
    """The handler of ``email.send``, bound to the store, the settings and a sender."""

    def __init__(self, store: EmailPreferenceStore, settings: Settings, sender: Sender) -> None:
        self._store = store
        self._settings = settings
        self._sender = sender

    async def send(self, ctx: conveyor.JobContext, payload: EmailJob) -> dict[str, object]:
        context = payload.parsed_context()
        recipients = await self._recipients(ctx.job.tenant_id, payload)
        for address, token in recipients:
            unsubscribe = None if token is None else unsubscribe_url(self._public_url, token)
            rendered = render(payload.template, context, self._public_url, unsubscribe)
            msg = message(rendered, self._settings.email_from, address, unsubscribe)
            try:
                await self._sender.send(msg)
            except PermanentRefusal as exc:
                raise conveyor.Discard(str(exc)) from exc
            ctx.log.info("email sent", to=address, template=payload.template.value)
        return {"sent": [address for address, _ in recipients]}

    @property
    def _public_url(self) -> str:
        return self._settings.public_url

    async def _recipients(self, tenant_id: str, payload: EmailJob) -> list[tuple[str, str | None]]:
        """(address, unsubscribe token or None) of each recipient. Members who turned
        their preferences off get nothing."""
        chosen = payload.recipients
        if chosen.addresses:
            return [(address, None) for address in chosen.addresses]
        contacts = await self._store.email_contacts(tenant_id)
        if chosen.owners:
            members = [c for c in contacts if c.role is Role.OWNER]
        else:
            ids = set(chosen.user_ids or ())
            members = [c for c in contacts if c.user_id in ids]
        return [(c.email, c.unsubscribe_token) for c in members if c.enabled is not False]
