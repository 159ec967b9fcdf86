"""API keys: shown once, stored hashed, found by prefix, scoped, expiring, touched when
used, and refused on the very next call once revoked."""

from __future__ import annotations

import asyncio
import time

import pytest
from accounts_support import RawRows

from conveyor.accounts import (
    Accounts,
    Forbidden,
    Invalid,
    NotFound,
    Principal,
    Session,
    Unauthenticated,
)
from conveyor.accounts import base as accounts_base
from conveyor.accounts.api_keys import MARK, PREFIX_LENGTH, TEXT_LENGTH, new_key_text, parse_key
from conveyor.accounts.ids import digest, new_id
from conveyor.store.accounts import ADMIN, READ, WRITE, NewApiKey, Role


async def test_a_key_is_shown_once_and_stored_hashed(
    accounts: Accounts, owner_principal: Principal, raw_rows: RawRows
) -> None:
    key, text = await accounts.create_api_key(owner_principal, "ci", [WRITE, READ])

    assert text.startswith(MARK)
    assert len(text) == TEXT_LENGTH
    parts = parse_key(text)
    assert parts is not None
    assert parts.prefix == key.prefix
    assert len(key.prefix) == PREFIX_LENGTH
    assert key.secret_hash == digest(parts.secret)
    assert key.scopes == (READ, WRITE)
    assert (key.name, key.tenant_id) == ("ci", owner_principal.tenant_id)
    assert key.created_by == owner_principal.caller_id
    assert key.expires_at is None
    assert key.revoked_at is None
    assert key.last_used_at is None
    rows = await raw_rows("conveyor_api_keys")
    assert key.prefix in rows
    assert text not in rows
    assert parts.secret not in rows
    # Listings show the prefix, never the text.
    listed = await accounts.list_api_keys(owner_principal)
    assert [k.id for k in listed] == [key.id]
    assert text not in repr(listed)


async def test_a_key_authenticates_with_its_scopes_and_no_role(
    accounts: Accounts, owner_principal: Principal
) -> None:
    key, text = await accounts.create_api_key(owner_principal, "reader", [READ])

    principal = await accounts.authenticate(text)

    assert principal.tenant_id == owner_principal.tenant_id
    assert principal.caller_id == f"key:{key.id}"
    assert principal.api_key_id == key.id
    assert principal.user_id is None
    assert principal.role is None
    assert not principal.operator
    assert principal.scopes == {READ}
    assert principal.has(READ)
    assert not principal.has(WRITE)
    assert not principal.has(ADMIN)
    me = await accounts.me(principal)
    assert me.user is None
    assert me.api_key is not None
    assert me.api_key.id == key.id


async def test_a_use_records_when_the_key_was_last_used(
    accounts: Accounts, owner_principal: Principal
) -> None:
    _key, text = await accounts.create_api_key(owner_principal, "ci", [READ])
    before = time.time()

    await accounts.authenticate(text)

    [listed] = await accounts.list_api_keys(owner_principal)
    assert listed.last_used_at is not None
    assert before - 1 <= listed.last_used_at <= time.time() + 1


async def test_a_revoked_key_fails_on_the_very_next_call(
    accounts: Accounts, peer_accounts: Accounts, owner_principal: Principal
) -> None:
    key, text = await accounts.create_api_key(owner_principal, "ci", [READ, WRITE])
    assert (await peer_accounts.authenticate(text)).api_key_id == key.id

    await accounts.revoke_api_key(owner_principal, key.id)

    # In this process and in another that used the key a moment ago.
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(text)
    with pytest.raises(Unauthenticated):
        await peer_accounts.authenticate(text)
    with pytest.raises(NotFound):
        await accounts.revoke_api_key(owner_principal, key.id)
    [listed] = await accounts.list_api_keys(owner_principal)
    assert listed.revoked_at is not None


async def test_an_expired_key_is_refused(accounts: Accounts, owner: Session) -> None:
    # The service's floor is a minute; the store takes the short lifetime a test waits out.
    assert owner.tenant_id is not None
    text = new_key_text()
    await accounts.store.create_api_key(
        NewApiKey(
            new_id("key"),
            owner.tenant_id,
            text.prefix,
            digest(text.secret),
            "x",
            (READ,),
            None,
            0.3,
        )
    )
    assert (await accounts.authenticate(str(text))).tenant_id == owner.tenant_id

    await asyncio.sleep(0.5)

    with pytest.raises(Unauthenticated):
        await accounts.authenticate(str(text))


async def test_a_key_with_a_lifetime_says_when_it_expires(
    accounts: Accounts, owner_principal: Principal
) -> None:
    key, _ = await accounts.create_api_key(owner_principal, "ci", [READ], ttl_s=3600)

    assert key.expires_at == pytest.approx(key.created_at + 3600, abs=1)


@pytest.mark.parametrize("ttl_s", [0, 59, -1, float("nan"), float("inf"), 11 * 365 * 86_400])
async def test_a_lifetime_out_of_range_is_invalid(
    accounts: Accounts, owner_principal: Principal, ttl_s: float
) -> None:
    with pytest.raises(Invalid, match="ttl_s"):
        await accounts.create_api_key(owner_principal, "ci", [READ], ttl_s=ttl_s)


async def test_a_wrong_secret_or_prefix_is_refused(
    accounts: Accounts, owner_principal: Principal
) -> None:
    _, text = await accounts.create_api_key(owner_principal, "ci", [READ])
    parts = parse_key(text)
    assert parts is not None
    other = new_key_text()

    for forged in (
        f"{MARK}{parts.prefix}_{other.secret}",
        f"{MARK}{other.prefix}_{parts.secret}",
        text[:-1],
        text + "x",
        text.replace("cvk_", "cvk-"),
    ):
        with pytest.raises(Unauthenticated) as refused:
            await accounts.authenticate(forged)
        assert str(refused.value) == Unauthenticated.MESSAGE


def test_only_text_of_a_keys_exact_shape_parses() -> None:
    key = new_key_text()
    assert parse_key(str(key)) == key
    underscored = f"{MARK}{'_' * PREFIX_LENGTH}_{key.secret}"
    assert parse_key(underscored) == type(key)("_" * PREFIX_LENGTH, key.secret)
    text = str(key)
    for malformed in (
        text + "\n",
        " " + text,
        text[:-1] + "\u00e9",  # a letter, but not an url-safe one
        text[:-1] + "\uff10",  # a digit, but not an ASCII one
        text[:-1] + "=",
        f"{MARK}{key.prefix}-{key.secret}",
        f"{MARK}{key.prefix}_{key.secret}".upper(),
        "",
    ):
        assert parse_key(malformed) is None, malformed


async def test_a_key_of_a_disabled_tenant_is_refused(
    accounts: Accounts, owner_principal: Principal
) -> None:
    _, text = await accounts.create_api_key(owner_principal, "ci", [READ])
    assert owner_principal.tenant_id is not None

    await accounts.set_tenant_disabled(owner_principal.tenant_id, True)

    with pytest.raises(Unauthenticated):
        await accounts.authenticate(text)


async def test_a_tenant_disabled_by_another_process_is_refused_within_the_cache_window(
    accounts: Accounts,
    peer_accounts: Accounts,
    owner: Session,
    owner_principal: Principal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts_base, "TENANT_CACHE_S", 1.0)
    _, text = await accounts.create_api_key(owner_principal, "ci", [READ])
    assert owner_principal.tenant_id is not None
    assert (await accounts.authenticate(text)).tenant_id == owner_principal.tenant_id

    await peer_accounts.set_tenant_disabled(owner_principal.tenant_id, True)
    # Read within the window: still the tenant this process saw, for the key and the token.
    await accounts.authenticate(text)
    await accounts.authenticate(owner.access_token)
    await asyncio.sleep(1.1)

    for credential in (text, owner.access_token):
        with pytest.raises(Unauthenticated):
            await accounts.authenticate(credential)


@pytest.mark.parametrize(
    ("scopes", "fragment"),
    [([], "at least one"), (["requests:delete"], "unknown scope"), (["\x00"], "unknown scope")],
)
async def test_scopes_must_be_known(
    accounts: Accounts, owner_principal: Principal, scopes: list[str], fragment: str
) -> None:
    with pytest.raises(Invalid, match=fragment):
        await accounts.create_api_key(owner_principal, "ci", scopes)
    assert await accounts.list_api_keys(owner_principal) == []


async def test_a_key_cannot_grant_more_than_its_maker_holds(
    accounts: Accounts, owner_principal: Principal
) -> None:
    _, admin_text = await accounts.create_api_key(owner_principal, "admin", [ADMIN])
    admin_key = await accounts.authenticate(admin_text)

    with pytest.raises(Forbidden, match="requests:write"):
        await accounts.create_api_key(admin_key, "more", [READ, WRITE])
    key, _ = await accounts.create_api_key(admin_key, "same", [ADMIN])
    assert key.created_by == admin_key.caller_id


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
async def test_only_admins_manage_keys(
    accounts: Accounts, owner: Session, owner_principal: Principal, role: Role
) -> None:
    assert owner.tenant_id is not None
    await accounts.create_user("m@example.com", "a long password")
    await accounts.add_member(owner.tenant_id, "m@example.com", role)
    session = await accounts.login("m@example.com", "a long password")
    member = await accounts.authenticate(session.access_token)
    key, _ = await accounts.create_api_key(owner_principal, "ci", [READ])

    with pytest.raises(Forbidden, match="admin"):
        await accounts.create_api_key(member, "mine", [READ])
    with pytest.raises(Forbidden, match="admin"):
        await accounts.list_api_keys(member)
    with pytest.raises(Forbidden, match="admin"):
        await accounts.revoke_api_key(member, key.id)


async def test_another_tenants_key_is_not_found(
    accounts: Accounts, owner_principal: Principal
) -> None:
    key, text = await accounts.create_api_key(owner_principal, "ci", [READ])
    other = await accounts.signup("other@example.com", "a long password", "Other")
    other_admin = await accounts.authenticate(other.access_token)

    with pytest.raises(NotFound):
        await accounts.revoke_api_key(other_admin, key.id)
    assert await accounts.list_api_keys(other_admin) == []
    with pytest.raises(NotFound):
        await accounts.list_api_keys(other_admin, tenant_id=owner_principal.tenant_id)
    assert (await accounts.authenticate(text)).api_key_id == key.id


async def test_the_console_lists_and_revokes_keys_of_every_tenant(
    accounts: Accounts, owner_principal: Principal
) -> None:
    other = await accounts.signup("other@example.com", "a long password", "Other")
    mine, _ = await accounts.create_api_key(owner_principal, "mine", [READ])
    theirs, _ = await accounts.create_api_key(
        Principal.console(), "theirs", [READ], tenant_id=other.tenant_id
    )
    console = Principal.console()

    assert {k.id for k in await accounts.list_api_keys(console)} == {mine.id, theirs.id}
    await accounts.revoke_api_key(console, theirs.id)
    with pytest.raises(NotFound, match="tenant"):
        await accounts.create_api_key(console, "x", [READ], tenant_id="tnt_nowhere")
