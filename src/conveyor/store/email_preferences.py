"""The email preferences seam: which events email which member of a tenant, the
addresses mail goes to, and the one-click unsubscribe of a mail's link.

Each method is one transaction. A member's preferences carry an unsubscribe token, new
each time they are set (so a link from before a change no longer turns them off); every
mail to the member carries it, so it is kept as given, as a webhook's signing secret is.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from conveyor.store.accounts import Role
from conveyor.store.records import Event, EventType


@dataclass(frozen=True, slots=True)
class EmailPreferences:
    """Which events email a member: events of ``event_types`` of jobs of ``kinds`` (empty:
    every kind), while ``enabled`` (an unsubscribe turns it off)."""

    tenant_id: str
    user_id: str
    event_types: tuple[EventType, ...]
    kinds: tuple[str, ...]
    enabled: bool
    updated_at: float

    def wants(self, event: Event) -> bool:
        """Whether ``event`` emails this member."""
        return (
            self.enabled
            and event.type in self.event_types
            and (not self.kinds or event.kind in self.kinds)
        )


@dataclass(frozen=True, slots=True)
class EmailRecipient:
    """A member whose preferences are on, with the address their mail goes to."""

    email: str
    preferences: EmailPreferences


@dataclass(frozen=True, slots=True)
class EmailContact:
    """A member of a tenant as mail reaches them: their address, role, and, when they
    have set preferences, whether those are on and the token of their unsubscribe link."""

    tenant_id: str
    user_id: str
    email: str
    role: Role
    enabled: bool | None
    """None: the member never set preferences."""
    unsubscribe_token: str | None


class EmailPreferenceStore(Protocol):
    """Each member's choice of the events that email them. Each method is one
    transaction."""

    async def get_email_preferences(self, tenant_id: str, user_id: str) -> EmailPreferences | None:
        """The member's preferences; None if they never set them (or are no member)."""

    async def set_email_preferences(
        self,
        tenant_id: str,
        user_id: str,
        *,
        event_types: Sequence[EventType],
        kinds: Sequence[str],
        enabled: bool,
    ) -> EmailPreferences:
        """Replace the member's preferences, with a new unsubscribe token. Raises
        :class:`~conveyor.store.base.DataRejected` if ``user_id`` is not a member of
        ``tenant_id``."""

    async def email_recipients(
        self, tenant_ids: Collection[str], event_types: Collection[EventType]
    ) -> dict[str, list[EmailRecipient]]:
        """In one statement, by tenant: the members of ``tenant_ids`` whose preferences
        are on and name one of ``event_types`` (each event's own match is
        :meth:`EmailPreferences.wants`). Tenants with none are left out."""

    async def email_contacts(self, tenant_id: str) -> list[EmailContact]:
        """The tenant's members as mail reaches them, oldest membership first."""

    async def unsubscribe_email(self, token: str) -> EmailPreferences | None:
        """Turn off the preferences whose unsubscribe token is ``token`` (the one-click
        unsubscribe of RFC 8058; made before any tenant is known); None if no preferences
        hold that token. Turning off preferences already off changes nothing."""
