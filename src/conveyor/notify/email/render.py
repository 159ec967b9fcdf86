"""Mails from templates: each template (``templates/<name>.subject.txt``, ``.txt`` and
``.html``, shipped with the package) renders a subject, a text part and an HTML part;
HTML is autoescaped, so nothing a job or an endpoint holds can become markup. A message
carries ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058 one-click) when its
recipient has an unsubscribe link."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import quote

import jinja2

from conveyor.notify.email.payload import JobEventContext, Template, WebhookDisabledContext
from conveyor.store.records import EventType

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("conveyor.notify.email", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)

OUTCOMES = {
    EventType.QUEUED: "queued",
    EventType.RETRYING: "will be retried",
    EventType.COMPLETED: "completed",
    EventType.FAILED: "failed",
    EventType.CANCELLED: "cancelled",
}
"""How a job_event mail words each durable event type."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """One mail's subject and bodies."""

    subject: str
    text: str
    html: str


def unsubscribe_url(public_url: str, token: str) -> str:
    """The link that turns the recipient's email preferences off."""
    return f"{public_url.rstrip('/')}/v1/email/unsubscribe?token={quote(token, safe='')}"


def render(
    template: Template,
    context: JobEventContext | WebhookDisabledContext,
    public_url: str,
    unsubscribe: str | None,
) -> Rendered:
    """The mail of ``template`` about ``context``; links start with ``public_url``."""
    values = _values(context, public_url.rstrip("/"))
    values["unsubscribe_url"] = unsubscribe
    subject = _ENV.get_template(f"{template.value}.subject.txt").render(values)
    # A subject is one line: a header cannot hold a newline.
    values["subject"] = " ".join(subject.split())
    return Rendered(
        values["subject"],
        _ENV.get_template(f"{template.value}.txt").render(values),
        _ENV.get_template(f"{template.value}.html").render(values),
    )


def _values(context: JobEventContext | WebhookDisabledContext, base: str) -> dict[str, Any]:
    values = context.model_dump()
    if isinstance(context, JobEventContext):
        values["outcome"] = OUTCOMES.get(context.type, context.type.value)
        values["link"] = (
            f"{base}/v1/requests/{context.request_id}"
            if context.request_id is not None
            else f"{base}/v1/jobs/{context.job_id}"
        )
        values["at"] = _when(context.at)
        values["retry_at"] = _when(context.run_at) if context.run_at is not None else None
    else:
        values["link"] = f"{base}/v1/webhooks/{context.webhook_id}"
    return values


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def message(
    rendered: Rendered, sender: str, recipient: str, unsubscribe: str | None
) -> EmailMessage:
    """The message of ``rendered`` from ``sender`` to ``recipient``: text with an HTML
    alternative; with ``unsubscribe``, the RFC 8058 one-click headers."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"
    if unsubscribe is not None:
        msg["List-Unsubscribe"] = f"<{unsubscribe}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


def _domain(address: str) -> str | None:
    """The domain of ``address`` (``Name <a@b>`` or ``a@b``), for the Message-ID."""
    bare = address.rsplit("<", 1)[-1].rstrip(">").strip()
    return bare.rsplit("@", 1)[1] if "@" in bare else None
