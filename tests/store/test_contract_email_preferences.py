"""The store contract, email preferences: a member's choice of the events that email
them, the recipients of a batch of events, a tenant's contacts and the one-click
unsubscribe (:class:`conveyor.store.email_preferences.EmailPreferenceStore`).

Every store kind must pass it, and on PostgreSQL also the store the API opens
(``role="auto"``), whose verbs act as conveyor_api under row security (migration 0014).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.store.accounts import Role
from conveyor.store.base import DataRejected, Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.records import Event, EventType
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

COMPLETED, FAILED, RETRYING = EventType.COMPLETED, EventType.FAILED, EventType.RETRYING


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-as-api"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store, and the PostgreSQL store the API opens (``role="auto"``)."""
    if request.param != "sqlite":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    kind: str = request.param
    return kind


@pytest.fixture
async def store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    opened: Store
    if store_kind == "sqlite":
        opened = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    else:
        server: PgTestServer = request.getfixturevalue("pg_server")
        role = "auto" if store_kind == "postgresql-as-api" else "none"
        opened = PostgresStore(server.url, role=role)
    await opened.open()
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


async def _tenant(store: Store, owner_email: str) -> tuple[str, str]:
    tenant, user = await store.signup(_id("tnt"), "Acme", _id("usr"), owner_email, "hash")
    return tenant.id, user.id


async def _member(store: Store, tenant_id: str, email: str, role: Role = Role.MEMBER) -> str:
    user = await store.create_user(_id("usr"), email, "hash")
    await store.add_member(tenant_id, user.id, role)
    return user.id


def _event(tenant_id: str, type_: EventType, kind: str = "asset.generate") -> Event:
    return Event(1, tenant_id, type_, 7, kind, "default", 1, {}, time.time())


async def test_preferences_are_set_read_back_and_replaced(store: Store) -> None:
    tenant, owner = await _tenant(store, "owner@example.com")
    assert await store.get_email_preferences(tenant, owner) is None

    before = time.time() - 1
    first = await store.set_email_preferences(
        tenant,
        owner,
        event_types=[COMPLETED, FAILED, COMPLETED],
        kinds=["asset.generate"],
        enabled=True,
    )
    assert (first.tenant_id, first.user_id) == (tenant, owner)
    assert first.event_types == (COMPLETED, FAILED)
    assert first.kinds == ("asset.generate",)
    assert first.enabled is True
    assert first.updated_at >= before
    assert await store.get_email_preferences(tenant, owner) == first

    second = await store.set_email_preferences(
        tenant, owner, event_types=[RETRYING], kinds=[], enabled=False
    )
    assert (second.event_types, second.kinds, second.enabled) == ((RETRYING,), (), False)
    assert await store.get_email_preferences(tenant, owner) == second


async def test_preferences_of_a_user_who_is_not_a_member_are_refused(store: Store) -> None:
    tenant, _ = await _tenant(store, "owner@example.com")
    other_tenant, stranger = await _tenant(store, "stranger@example.com")
    with pytest.raises(DataRejected, match="not a member"):
        await store.set_email_preferences(
            tenant, stranger, event_types=[COMPLETED], kinds=[], enabled=True
        )
    assert await store.get_email_preferences(tenant, stranger) is None
    assert await store.get_email_preferences(other_tenant, stranger) is None


async def test_recipients_of_a_batch_are_grouped_by_tenant_and_match_by_type(
    store: Store,
) -> None:
    acme, acme_owner = await _tenant(store, "owner@acme.example")
    acme_dev = await _member(store, acme, "dev@acme.example")
    acme_quiet = await _member(store, acme, "quiet@acme.example")
    await _member(store, acme, "never@acme.example")  # never set preferences
    beta, beta_owner = await _tenant(store, "owner@beta.example")
    gamma, gamma_owner = await _tenant(store, "owner@gamma.example")

    await store.set_email_preferences(
        acme, acme_owner, event_types=[COMPLETED], kinds=[], enabled=True
    )
    await store.set_email_preferences(
        acme, acme_dev, event_types=[FAILED], kinds=["video.process"], enabled=True
    )
    await store.set_email_preferences(
        acme, acme_quiet, event_types=[COMPLETED], kinds=[], enabled=False
    )
    await store.set_email_preferences(
        beta, beta_owner, event_types=[COMPLETED, FAILED], kinds=[], enabled=True
    )
    await store.set_email_preferences(
        gamma, gamma_owner, event_types=[COMPLETED], kinds=[], enabled=True
    )

    found = await store.email_recipients({acme, beta}, {COMPLETED, FAILED})
    assert set(found) == {acme, beta}  # gamma was not asked for
    assert sorted(r.email for r in found[acme]) == ["dev@acme.example", "owner@acme.example"]
    assert [r.email for r in found[beta]] == ["owner@beta.example"]
    by_user = {r.preferences.user_id: r.preferences for r in found[acme]}
    assert by_user[acme_owner].wants(_event(acme, COMPLETED))
    assert not by_user[acme_owner].wants(_event(acme, FAILED))
    assert by_user[acme_dev].wants(_event(acme, FAILED, "video.process"))
    assert not by_user[acme_dev].wants(_event(acme, FAILED, "asset.generate"))

    only_retrying = await store.email_recipients({acme, beta}, {RETRYING})
    assert only_retrying == {}
    assert await store.email_recipients(set(), {COMPLETED}) == {}


async def test_contacts_name_every_member_with_role_and_unsubscribe_state(store: Store) -> None:
    tenant, owner = await _tenant(store, "owner@example.com")
    admin = await _member(store, tenant, "admin@example.com", Role.ADMIN)
    other_tenant, _ = await _tenant(store, "other@example.com")
    await store.set_email_preferences(
        tenant, admin, event_types=[COMPLETED], kinds=[], enabled=True
    )

    contacts = {c.user_id: c for c in await store.email_contacts(tenant)}
    assert set(contacts) == {owner, admin}
    assert (contacts[owner].email, contacts[owner].role) == ("owner@example.com", Role.OWNER)
    assert (contacts[owner].enabled, contacts[owner].unsubscribe_token) == (None, None)
    assert contacts[admin].role is Role.ADMIN
    assert contacts[admin].enabled is True
    token = contacts[admin].unsubscribe_token
    assert token is not None
    assert len(token) >= 40
    assert [c.email for c in await store.email_contacts(other_tenant)] == ["other@example.com"]


async def test_unsubscribe_by_token_turns_preferences_off_once(store: Store) -> None:
    tenant, owner = await _tenant(store, "owner@example.com")
    await store.set_email_preferences(
        tenant, owner, event_types=[COMPLETED], kinds=[], enabled=True
    )
    (contact,) = await store.email_contacts(tenant)
    assert contact.unsubscribe_token is not None

    off = await store.unsubscribe_email(contact.unsubscribe_token)
    assert off is not None
    assert (off.tenant_id, off.user_id, off.enabled) == (tenant, owner, False)
    assert off.event_types == (COMPLETED,)  # the choice is kept, only turned off
    assert await store.email_recipients({tenant}, {COMPLETED}) == {}
    again = await store.unsubscribe_email(contact.unsubscribe_token)
    assert again == off  # nothing changed the second time

    assert await store.unsubscribe_email("no-such-token") is None


async def test_setting_preferences_again_makes_a_new_token(store: Store) -> None:
    tenant, owner = await _tenant(store, "owner@example.com")
    await store.set_email_preferences(
        tenant, owner, event_types=[COMPLETED], kinds=[], enabled=True
    )
    (before,) = await store.email_contacts(tenant)
    await store.set_email_preferences(
        tenant, owner, event_types=[COMPLETED], kinds=[], enabled=True
    )
    (after,) = await store.email_contacts(tenant)
    assert after.unsubscribe_token not in (None, before.unsubscribe_token)
    assert before.unsubscribe_token is not None
    assert await store.unsubscribe_email(before.unsubscribe_token) is None
    prefs = await store.get_email_preferences(tenant, owner)
    assert prefs is not None
    assert prefs.enabled


async def test_removing_a_member_forgets_their_preferences(store: Store) -> None:
    tenant, _ = await _tenant(store, "owner@example.com")
    dev = await _member(store, tenant, "dev@example.com")
    await store.set_email_preferences(tenant, dev, event_types=[COMPLETED], kinds=[], enabled=True)
    assert await store.remove_member(tenant, dev)
    assert await store.get_email_preferences(tenant, dev) is None
    assert await store.email_recipients({tenant}, {COMPLETED}) == {}
