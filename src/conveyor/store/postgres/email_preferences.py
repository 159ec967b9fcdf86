"""Email preferences on PostgreSQL (:class:`~conveyor.store.email_preferences.
EmailPreferenceStore`). A member's preferences and a tenant's contacts run in the scope
of that tenant; the recipients of a batch of events, which spans tenants, in an
operator's; the unsubscribe of a mail's link, made before any tenant is known, in
:data:`~conveyor.store.postgres.accounts_statements.NO_TENANT` through a function of
migration 0014."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from typing import Any

from conveyor.store.accounts import Role
from conveyor.store.base import DataRejected
from conveyor.store.columns import Column, Table
from conveyor.store.email_preferences import EmailContact, EmailPreferences, EmailRecipient
from conveyor.store.postgres.accounts_statements import NO_TENANT, AccountStatements, timestamp
from conveyor.store.postgres.connection import OPERATOR, Database, Scope
from conveyor.store.records import EventType

UNSUBSCRIBE_TOKEN_BYTES = 32


def _event_types(values: Sequence[str]) -> tuple[EventType, ...]:
    return tuple(EventType(v) for v in values)


PREFERENCES: Table[EmailPreferences] = Table(
    EmailPreferences,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("event_types", _event_types),
        Column("kinds", tuple),
        Column("enabled"),
        Column("updated_at", timestamp),
    ),
)
CONTACTS: Table[EmailContact] = Table(
    EmailContact,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("email"),
        Column("role", Role),
        Column("enabled"),
        Column("unsubscribe_token"),
    ),
)
_SQL = AccountStatements(
    "email_preferences.sql",
    {"preference_columns": PREFERENCES, "contact_columns": CONTACTS},
)


class PostgresEmailPreferences:
    """The email preferences: part of ``PostgresStore``."""

    _db: Database

    async def get_email_preferences(self, tenant_id: str, user_id: str) -> EmailPreferences | None:
        values = {"tenant_id": tenant_id, "user_id": user_id}
        return await self._db.run(
            lambda conn: _SQL.one(conn, PREFERENCES, "get_email_preferences", values),
            Scope(tenant_id),
        )

    async def set_email_preferences(
        self,
        tenant_id: str,
        user_id: str,
        *,
        event_types: Sequence[EventType],
        kinds: Sequence[str],
        enabled: bool,
    ) -> EmailPreferences:
        values: dict[str, Any] = {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "event_types": [t.value for t in dict.fromkeys(event_types)],
            "kinds": list(dict.fromkeys(kinds)),
            "enabled": enabled,
            "token": secrets.token_urlsafe(UNSUBSCRIBE_TOKEN_BYTES),
        }
        try:
            return await self._db.run(
                lambda conn: _SQL.inserted(conn, PREFERENCES, "set_email_preferences", values),
                Scope(tenant_id),
            )
        except DataRejected as exc:
            raise DataRejected(
                f"user {user_id!r} is not a member of tenant {tenant_id!r}: add them first"
            ) from exc

    async def email_recipients(
        self, tenant_ids: Collection[str], event_types: Collection[EventType]
    ) -> dict[str, list[EmailRecipient]]:
        if not tenant_ids or not event_types:
            return {}
        values = {
            "tenant_ids": sorted(set(tenant_ids)),
            "event_types": sorted({t.value for t in event_types}),
        }
        rows = await self._db.run(
            lambda conn: _SQL.fetch(conn, "email_recipients", values), OPERATOR
        )
        found: dict[str, list[EmailRecipient]] = {}
        for row in rows:
            preferences = PREFERENCES.decode(row, 1)
            found.setdefault(preferences.tenant_id, []).append(
                EmailRecipient(row["email"], preferences)
            )
        return found

    async def email_contacts(self, tenant_id: str) -> list[EmailContact]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, CONTACTS, "email_contacts", {"tenant_id": tenant_id}),
            Scope(tenant_id),
        )

    async def unsubscribe_email(self, token: str) -> EmailPreferences | None:
        return await self._db.run(
            lambda conn: _SQL.one(conn, PREFERENCES, "unsubscribe_email", {"token": token}),
            NO_TENANT,
        )
