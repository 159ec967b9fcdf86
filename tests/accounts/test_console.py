"""The console's verbs (what the CLI calls): tenants, users, operators, members, signing
keys, and the demo account of a first start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from accounts_support import PASSWORD, account_settings, started

from conveyor.accounts import Accounts, Conflict, NotFound, Principal, Unauthenticated
from conveyor.accounts.service import DEMO_EMAIL
from conveyor.store.accounts import SCOPES, Role
from conveyor.store.base import Store
from conveyor.store.sqlite import SqliteStore


async def test_tenants_are_created_disabled_enabled_and_limited(accounts: Accounts) -> None:
    tenant = await accounts.create_tenant(" Acme ", tenant_id="acme")

    assert (tenant.id, tenant.name, tenant.disabled, tenant.rate_limit) == (
        "acme",
        "Acme",
        False,
        None,
    )
    assert (await accounts.set_tenant_disabled("acme", True)).disabled
    assert not (await accounts.set_tenant_disabled("acme", False)).disabled
    assert (await accounts.set_tenant_rate_limit("acme", "100/minute")).rate_limit == "100/minute"
    assert (await accounts.set_tenant_rate_limit("acme", None)).rate_limit is None
    generated = await accounts.create_tenant("Other")
    assert generated.id.startswith("tnt_")
    with pytest.raises(Conflict, match="acme"):
        await accounts.create_tenant("Again", tenant_id="acme")
    for verb in (
        accounts.tenant("nobody"),
        accounts.set_tenant_disabled("nobody", True),
        accounts.set_tenant_rate_limit("nobody", "1/second"),
    ):
        with pytest.raises(NotFound, match="tenants list"):
            await verb


async def test_users_are_made_members_and_found_by_id_or_email(accounts: Accounts) -> None:
    tenant = await accounts.create_tenant("Acme")
    user = await accounts.create_user("U@Example.com", PASSWORD)

    member = await accounts.add_member(tenant.id, "u@example.com", Role.ADMIN)

    assert (member.user_id, member.role) == (user.id, Role.ADMIN)
    assert await accounts.user(user.id) == await accounts.user(" U@example.COM ")
    assert not user.operator
    with pytest.raises(Conflict, match="member"):
        await accounts.add_member(tenant.id, user.id, Role.VIEWER)
    with pytest.raises(Conflict, match="has an account"):
        await accounts.create_user("u@example.com", PASSWORD)
    with pytest.raises(NotFound, match="users list"):
        await accounts.user("nobody@example.com")
    with pytest.raises(NotFound, match="users list"):
        await accounts.user("usr_nobody")
    # An email that looks like an id is an email.
    odd = await accounts.create_user("usr_x@example.com", PASSWORD)
    assert (await accounts.user("usr_x@example.com")).id == odd.id
    with pytest.raises(NotFound, match="tenants list"):
        await accounts.add_member("tnt_nowhere", user.id, Role.VIEWER)
    session = await accounts.login("u@example.com", PASSWORD)
    assert (session.tenant_id, session.role) == (tenant.id, Role.ADMIN)


async def test_an_operator_is_made_only_by_the_console(accounts: Accounts) -> None:
    operator = await accounts.create_operator("op@example.com", PASSWORD)
    owner = await accounts.signup("owner@example.com", PASSWORD, "Acme")

    assert operator.operator
    assert not owner.user.operator
    # Nothing a tenant's owner can do makes an operator.
    principal = await accounts.authenticate(owner.access_token)
    assert not principal.operator
    _, token = await accounts.invite(principal, "new@example.com", Role.OWNER)
    invited = await accounts.signup_invited(token, PASSWORD)
    assert not invited.user.operator


async def test_disabling_a_user_ends_its_sessions(accounts: Accounts) -> None:
    session = await accounts.signup("owner@example.com", PASSWORD, "Acme")

    disabled = await accounts.set_user_disabled("owner@example.com", True)

    assert disabled.disabled
    with pytest.raises(Unauthenticated):
        await accounts.refresh(session.refresh_token)
    enabled = await accounts.set_user_disabled(session.user.id, False)
    assert not enabled.disabled
    # Enabling does not bring the revoked session back.
    with pytest.raises(Unauthenticated):
        await accounts.refresh(session.refresh_token)


async def test_the_demo_account_is_made_once(accounts: Accounts) -> None:
    demo = await accounts.bootstrap_demo()

    assert demo is not None
    assert demo.user.email == DEMO_EMAIL
    assert demo.tenant.name == "Demo"
    assert len(demo.password) >= 20
    assert set(demo.api_key.scopes) == SCOPES
    session = await accounts.login(DEMO_EMAIL, demo.password)
    assert (session.tenant_id, session.role) == (demo.tenant.id, Role.OWNER)
    key = await accounts.authenticate(demo.api_key_text)
    assert key.tenant_id == demo.tenant.id
    # Idempotent: nothing new, nothing shown again.
    assert await accounts.bootstrap_demo() is None
    assert len(await accounts.store.list_users()) == 1
    assert len(await accounts.list_api_keys(Principal.console())) == 1


async def test_each_demo_account_has_a_password_and_key_of_its_own(tmp_path: Path) -> None:
    """No fixed default credential: two first starts share nothing."""
    made = []
    for name in ("one", "two"):
        store = SqliteStore(f"sqlite:///{tmp_path}/{name}.db")
        await store.open()
        try:
            await store.migrate()
            made.append(await (await started(store, account_settings())).bootstrap_demo())
        finally:
            await store.close()

    one, two = made
    assert one is not None
    assert two is not None
    assert one.password != two.password
    assert one.api_key_text != two.api_key_text
    assert one.tenant.id != two.tenant.id


async def test_two_processes_starting_at_once_make_one_demo(
    store: Store, peer_store: Store
) -> None:
    one, two = await asyncio.gather(
        started(store, account_settings()), started(peer_store, account_settings())
    )

    demos = await asyncio.gather(one.bootstrap_demo(), two.bootstrap_demo())

    made = [d for d in demos if d is not None]
    assert len(made) == 1
    assert [u.email for u in await store.list_users()] == [DEMO_EMAIL]


async def test_no_demo_once_anyone_has_an_account(accounts: Accounts) -> None:
    await accounts.create_user("someone@example.com", PASSWORD)

    assert await accounts.bootstrap_demo() is None
    assert await accounts.store.get_user_by_email(DEMO_EMAIL) is None
