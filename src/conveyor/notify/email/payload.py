"""The payload of an ``email.send`` job: which template, to whom, and what it says. Other
parts enqueue these jobs too (webhooks: ``webhook_disabled`` to the owners), so this is a
contract::

    {"template": "job_event" | "webhook_disabled",
     "recipients": {"owners": true} | {"user_ids": [...]} | {"addresses": [...]},
     "context": {...}}

The job's ``tenant_id`` is the tenant whose members (``owners``, ``user_ids``) are meant.
Each template's context is checked at enqueue, so a job that cannot be rendered is
refused then rather than failing at every attempt.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from conveyor.store.records import EventType

ADDRESS_PATTERN = r"^[^@\s<>,;]+@[^@\s<>,;]+$"
"""One bare address (``user@example.com``): no display name, no list."""


class Template(enum.StrEnum):
    """The mails Conveyor sends."""

    JOB_EVENT = "job_event"
    """A job completed, failed, was cancelled or will be retried (a member's choice)."""
    WEBHOOK_DISABLED = "webhook_disabled"
    """A webhook endpoint was disabled after consecutive failures (to the owners)."""


class Recipients(BaseModel):
    """Exactly one of: the tenant's owners, some of its members, or addresses."""

    model_config = ConfigDict(extra="forbid")

    owners: Literal[True] | None = None
    user_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    addresses: list[str] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("owners", "user_ids", "addresses") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                'give exactly one of {"owners": true}, {"user_ids": [...]} or '
                f'{{"addresses": [...]}}; got {given or "none"}'
            )
        for address in self.addresses or ():
            if not _is_address(address):
                raise ValueError(f"{address!r} is not an email address such as a@example.com")
        return self


def _is_address(text: str) -> bool:
    return re.fullmatch(ADDRESS_PATTERN, text) is not None


class JobEventContext(BaseModel):
    """What a ``job_event`` mail tells: the event (see ``conveyor.store.records.Event``)."""

    model_config = ConfigDict(extra="forbid")

    event_id: int | None = None
    type: EventType
    job_id: int
    request_id: int | None = None
    kind: str
    queue: str
    attempt: int
    at: float
    error: dict[str, Any] | None = None
    """``{"type", "message"}`` of a failure or a retry."""
    run_at: float | None = None
    """When a retrying job runs again."""


class WebhookDisabledContext(BaseModel):
    """What a ``webhook_disabled`` mail tells."""

    model_config = ConfigDict(extra="forbid")

    webhook_id: int
    url: str
    failures: int
    last_error: str


CONTEXTS: dict[Template, type[BaseModel]] = {
    Template.JOB_EVENT: JobEventContext,
    Template.WEBHOOK_DISABLED: WebhookDisabledContext,
}


class EmailJob(BaseModel):
    """The payload of an ``email.send`` job."""

    model_config = ConfigDict(extra="forbid")

    template: Template
    recipients: Recipients
    context: dict[str, Any]

    @model_validator(mode="after")
    def _context_fits_template(self) -> Self:
        try:
            CONTEXTS[self.template].model_validate(self.context)
        except ValidationError as exc:
            wrong = "; ".join(
                ".".join(["context", *(str(p) for p in error["loc"])]) + f": {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise ValueError(f"context of template {self.template.value!r}: {wrong}") from None
        return self

    def parsed_context(self) -> JobEventContext | WebhookDisabledContext:
        """The context as its template's model."""
        if self.template is Template.JOB_EVENT:
            return JobEventContext.model_validate(self.context)
        return WebhookDisabledContext.model_validate(self.context)
