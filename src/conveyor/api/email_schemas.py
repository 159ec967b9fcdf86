"""The bodies of ``/v1/me/email-preferences``: which events email the signed-in user."""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.schemas import Timestamp, at_utc
from conveyor.engine.limits import KIND_NAME
from conveyor.store.email_preferences import EmailPreferences
from conveyor.store.records import EventType

MAX_CHOICES = 100
"""Kinds (or event types) one member may name."""


class EmailEventType(enum.StrEnum):
    """The event types that can email: the durable ones (``job.started`` and
    ``job.progress`` are live only, never stored, so never dispatched)."""

    QUEUED = EventType.QUEUED.value
    RETRYING = EventType.RETRYING.value
    COMPLETED = EventType.COMPLETED.value
    FAILED = EventType.FAILED.value
    CANCELLED = EventType.CANCELLED.value


if {t.value for t in EmailEventType} != {t.value for t in EventType if t.durable}:
    raise ImportError("EmailEventType must list the durable EventType values")


KindName = Annotated[str, Field(pattern=f"^{KIND_NAME.pattern}$")]


class EmailPreferencesIn(BaseModel):
    """The events that email the user: those of ``event_types`` of jobs of ``kinds``
    (empty: every kind), while ``enabled``."""

    model_config = ConfigDict(extra="forbid")

    event_types: list[EmailEventType] = Field(max_length=MAX_CHOICES)
    kinds: list[KindName] = Field(default_factory=list, max_length=MAX_CHOICES)
    enabled: bool = True

    def types(self) -> list[EventType]:
        """The chosen event types as the store takes them."""
        return [EventType(t.value) for t in self.event_types]


class EmailPreferencesOut(BaseModel):
    """The user's email preferences in the caller's tenant. ``updated_at`` is null until
    they are first set (nothing emails the user then)."""

    event_types: list[EventType]
    kinds: list[str]
    enabled: bool
    updated_at: Timestamp | None

    @classmethod
    def of(cls, preferences: EmailPreferences | None) -> EmailPreferencesOut:
        if preferences is None:
            return cls(event_types=[], kinds=[], enabled=False, updated_at=None)
        return cls(
            event_types=list(preferences.event_types),
            kinds=list(preferences.kinds),
            enabled=preferences.enabled,
            updated_at=at_utc(preferences.updated_at),
        )
