"""Email preferences on SQLite (:class:`~conveyor.store.email_preferences.
EmailPreferenceStore`), each verb one transaction on the store's thread."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from conveyor.store.accounts import Role
from conveyor.store.base import DataRejected
from conveyor.store.columns import Column, Table
from conveyor.store.email_preferences import EmailContact, EmailPreferences, EmailRecipient
from conveyor.store.records import EventType
from conveyor.store.sqlite.accounts_statements import AccountStatements
from conveyor.store.sqlite.connection import Database

UNSUBSCRIBE_TOKEN_BYTES = 32


def _event_types(text: str) -> tuple[EventType, ...]:
    return tuple(EventType(v) for v in orjson.loads(text))


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(orjson.loads(text))


def _enabled_or_none(value: int | None) -> bool | None:
    return None if value is None else bool(value)


PREFERENCES: Table[EmailPreferences] = Table(
    EmailPreferences,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("event_types", _event_types),
        Column("kinds", _kinds),
        Column("enabled", bool),
        Column("updated_at"),
    ),
)
CONTACTS: Table[EmailContact] = Table(
    EmailContact,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("email"),
        Column("role", Role),
        Column("enabled", _enabled_or_none),
        Column("unsubscribe_token"),
    ),
)
_SQL = AccountStatements(
    "email_preferences.sql",
    {"preference_columns": PREFERENCES, "contact_columns": CONTACTS},
)


def _json(values: Collection[str]) -> str:
    return orjson.dumps(list(values)).decode()


class SqliteEmailPreferences:
    """The email preferences: part of ``SqliteStore``."""

    _db: Database

    async def get_email_preferences(self, tenant_id: str, user_id: str) -> EmailPreferences | None:
        values = {"tenant_id": tenant_id, "user_id": user_id}
        return await self._db.read_statement(
            lambda conn, now: _SQL.one(conn, PREFERENCES, "get_email_preferences", values)
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
            "event_types": _json([t.value for t in dict.fromkeys(event_types)]),
            "kinds": _json(dict.fromkeys(kinds)),
            "enabled": enabled,
            "token": secrets.token_urlsafe(UNSUBSCRIBE_TOKEN_BYTES),
        }
        try:
            return await self._db.write(
                lambda conn, now: _SQL.inserted(
                    conn, PREFERENCES, "set_email_preferences", {**values, "now": now}
                )
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
            "tenant_ids": _json(sorted(set(tenant_ids))),
            "event_types": _json(sorted({t.value for t in event_types})),
        }
        rows = await self._db.read_statement(
            lambda conn, now: _SQL.run(conn, "email_recipients", values).fetchall()
        )
        found: dict[str, list[EmailRecipient]] = {}
        for row in rows:
            preferences = PREFERENCES.decode(row, 1)
            found.setdefault(preferences.tenant_id, []).append(EmailRecipient(row[0], preferences))
        return found

    async def email_contacts(self, tenant_id: str) -> list[EmailContact]:
        return await self._db.read_statement(
            lambda conn, now: _SQL.all(conn, CONTACTS, "email_contacts", {"tenant_id": tenant_id})
        )

    async def unsubscribe_email(self, token: str) -> EmailPreferences | None:
        return await self._db.write(
            lambda conn, now: _SQL.one(
                conn, PREFERENCES, "unsubscribe_email", {"token": token, "now": now}
            )
        )
