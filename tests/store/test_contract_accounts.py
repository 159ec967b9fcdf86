"""The store contract, accounts: tenants, users, memberships, invitations, refresh
tokens, API keys and signing keys (:class:`conveyor.store.accounts.AccountStore`).

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py),
and on PostgreSQL also the store the API opens (``role="auto"``), whose every verb acts as
conveyor_api under row security (migration 0011). Each test drives the store only through
the protocol and asserts on what it reads back. Races run on two store instances on one
database (``peer_store``: another process's view), so on PostgreSQL they are two
connections.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from conveyor.store.accounts import (
    ADMIN,
    READ,
    WRITE,
    NewApiKey,
    NewRefreshToken,
    Role,
    RotateOutcome,
    SigningKey,
)
from conveyor.store.base import ConflictError, DataRejected, Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlite import SqliteStore
from pg_server import PgTestServer

SHORT_TTL_S = 0.3
"""Long enough for the verbs in between, short enough to wait out in a test."""


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-as-api"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store, and the PostgreSQL store the API opens (``role="auto"``)."""
    if request.param != "sqlite":
        server: PgTestServer = request.getfixturevalue("pg_server")
        server.empty()
    kind: str = request.param
    return kind


@asynccontextmanager
async def _opened(kind: str, tmp_path: Path, server: PgTestServer | None) -> AsyncIterator[Store]:
    opened: Store
    if kind == "sqlite":
        opened = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    else:
        assert server is not None
        opened = PostgresStore(server.url, role="auto" if kind == "postgresql-as-api" else "none")
    await opened.open()
    try:
        await opened.migrate()
        if kind == "postgresql-as-api":
            assert isinstance(opened, PostgresStore)
            assert opened.role == "conveyor_api"
        yield opened
    finally:
        await opened.close()


def _server(kind: str, request: pytest.FixtureRequest) -> PgTestServer | None:
    if kind == "sqlite":
        return None
    server: PgTestServer = request.getfixturevalue("pg_server")
    return server


@pytest.fixture
async def store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    async with _opened(store_kind, tmp_path, _server(store_kind, request)) as opened:
        yield opened


@pytest.fixture
async def peer_store(
    store: Store, store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    """A second store instance on the same database as ``store``, of the same kind."""
    async with _opened(store_kind, tmp_path, _server(store_kind, request)) as opened:
        yield opened


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def _hash() -> str:
    return secrets.token_hex(32)


async def _tenant_with_owner(store: Store, email: str = "owner@example.com") -> tuple[str, str]:
    tenant, user = await store.signup(_id("tnt"), "Acme", _id("usr"), email, "argon2-hash")
    return tenant.id, user.id


async def _user(store: Store, email: str) -> str:
    return (await store.create_user(_id("usr"), email, "argon2-hash")).id


def _refresh(user_id: str, tenant_id: str | None, ttl_s: float = 3600.0) -> NewRefreshToken:
    return NewRefreshToken(_id("rft"), _id("fam"), user_id, tenant_id, _hash(), ttl_s)


def _signing_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or _id("sk"), "EdDSA", "private-pem", "public-pem", 0.0, None)


def _api_key(tenant_id: str, ttl_s: float | None = None) -> NewApiKey:
    return NewApiKey(
        _id("key"),
        tenant_id,
        secrets.token_urlsafe(9),
        _hash(),
        "ci",
        (READ, WRITE),
        None,
        ttl_s,
    )


# -- roles -----------------------------------------------------------------------------------
def test_roles_rank_and_scopes() -> None:
    assert [r.rank for r in (Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER)] == [1, 2, 3, 4]
    assert Role.VIEWER.scopes == {READ}
    assert Role.MEMBER.scopes == {READ, WRITE}
    assert Role.ADMIN.scopes == Role.OWNER.scopes == {READ, WRITE, ADMIN}


# -- tenants ---------------------------------------------------------------------------------
async def test_tenants_are_created_read_listed_and_changed(store: Store) -> None:
    before = time.time()
    first = await store.create_tenant("default", "The default tenant")
    second = await store.create_tenant(_id("tnt"), "Acme")
    assert first.id == "default"
    assert (first.name, first.disabled, first.rate_limit) == ("The default tenant", False, None)
    assert before - 1 <= first.created_at <= time.time() + 1
    assert await store.get_tenant("default") == first
    assert await store.get_tenant("nobody") is None
    assert [t.id for t in await store.list_tenants()] == [first.id, second.id]

    assert await store.set_tenant_disabled(second.id, True)
    assert await store.set_tenant_rate_limit(second.id, "1000/minute")
    changed = await store.get_tenant(second.id)
    assert changed is not None
    assert (changed.disabled, changed.rate_limit) == (True, "1000/minute")
    assert await store.set_tenant_rate_limit(second.id, None)
    assert await store.set_tenant_disabled(second.id, False)
    assert await store.get_tenant(second.id) == second
    assert not await store.set_tenant_disabled("nobody", True)
    assert not await store.set_tenant_rate_limit("nobody", "1/second")


async def test_a_tenant_id_exists_once(store: Store) -> None:
    await store.create_tenant("acme", "Acme")
    with pytest.raises(ConflictError, match="acme"):
        await store.create_tenant("acme", "Acme again")


@pytest.mark.parametrize("bad", ["", "a b", "a.b", "ünï", "x" * 65, "a/b", "a'b"])
async def test_a_tenant_id_outside_the_pattern_is_refused(store: Store, bad: str) -> None:
    with pytest.raises(DataRejected, match="must match"):
        await store.create_tenant(bad, "Bad")
    with pytest.raises(DataRejected, match="must match"):
        await store.signup(bad, "Bad", _id("usr"), "bad@example.com", "hash")
    assert await store.list_tenants() == []
    assert await store.get_user_by_email("bad@example.com") is None


async def test_the_longest_tenant_id_is_accepted(store: Store) -> None:
    longest = "A-z_9" * 12 + "abcd"
    assert len(longest) == 64
    assert (await store.create_tenant(longest, "Long")).id == longest


# -- signup and users ------------------------------------------------------------------------
async def test_signup_creates_the_tenant_its_user_and_owner_membership(store: Store) -> None:
    tenant, user = await store.signup("tnt_1", "Acme", "usr_1", "ann@example.com", "h1")
    assert (tenant.id, tenant.name) == ("tnt_1", "Acme")
    assert (user.id, user.email, user.password_hash) == ("usr_1", "ann@example.com", "h1")
    assert not user.operator
    assert not user.disabled
    assert await store.get_role("tnt_1", "usr_1") is Role.OWNER
    [member] = await store.memberships("usr_1")
    assert (member.tenant_id, member.email, member.role) == ("tnt_1", "ann@example.com", Role.OWNER)


async def test_signup_with_a_taken_email_creates_nothing(store: Store) -> None:
    await store.create_user("usr_1", "ann@example.com", None)
    with pytest.raises(ConflictError, match=r"ann@example\.com"):
        await store.signup("tnt_1", "Acme", "usr_2", "ann@example.com", "h")
    assert await store.get_tenant("tnt_1") is None
    assert await store.get_user("usr_2") is None


async def test_signup_with_a_taken_tenant_id_says_so(store: Store) -> None:
    await store.create_tenant("tnt_1", "Acme")
    with pytest.raises(ConflictError, match="tnt_1"):
        await store.signup("tnt_1", "Acme", "usr_2", "bob@example.com", "h")
    assert await store.get_user("usr_2") is None


async def test_users_are_created_found_listed_and_changed(store: Store) -> None:
    ann = await store.create_user("usr_a", "ann@example.com", "h1")
    root = await store.create_user("usr_r", "root@example.com", None, operator=True)
    assert root.operator
    assert root.password_hash is None
    assert await store.get_user("usr_a") == ann
    assert await store.get_user_by_email("root@example.com") == root
    assert await store.get_user_by_email("ANN@example.com") is None
    assert await store.get_user("usr_x") is None
    assert [u.id for u in await store.list_users()] == ["usr_a", "usr_r"]

    assert await store.set_password_hash("usr_a", "h2")
    assert await store.set_user_disabled("usr_a", True)
    changed = await store.get_user("usr_a")
    assert changed is not None
    assert (changed.password_hash, changed.disabled) == ("h2", True)
    assert not await store.set_password_hash("usr_x", "h")
    assert not await store.set_user_disabled("usr_x", True)


async def test_an_email_belongs_to_one_user(store: Store) -> None:
    await store.create_user("usr_a", "ann@example.com", None)
    with pytest.raises(ConflictError, match=r"ann@example\.com"):
        await store.create_user("usr_b", "ann@example.com", None)
    with pytest.raises(ConflictError, match="usr_a"):
        await store.create_user("usr_a", "other@example.com", None)


# -- members ---------------------------------------------------------------------------------
async def test_members_are_added_listed_changed_and_removed(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    bob = await _user(store, "bob@example.com")
    member = await store.add_member(tenant_id, bob, Role.MEMBER)
    assert (member.tenant_id, member.user_id, member.email, member.role) == (
        tenant_id,
        bob,
        "bob@example.com",
        Role.MEMBER,
    )
    assert [m.user_id for m in await store.list_members(tenant_id)] == [owner, bob]
    assert await store.get_role(tenant_id, bob) is Role.MEMBER

    changed = await store.set_role(tenant_id, bob, Role.ADMIN)
    assert changed is not None
    assert changed.role is Role.ADMIN
    assert await store.get_role(tenant_id, bob) is Role.ADMIN
    assert await store.set_role(tenant_id, _id("usr"), Role.ADMIN) is None

    assert await store.remove_member(tenant_id, bob)
    assert not await store.remove_member(tenant_id, bob)
    assert await store.get_role(tenant_id, bob) is None
    assert await store.memberships(bob) == []


async def test_a_user_is_a_member_once(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    with pytest.raises(ConflictError, match="member"):
        await store.add_member(tenant_id, owner, Role.VIEWER)
    assert await store.get_role(tenant_id, owner) is Role.OWNER


async def test_a_membership_needs_its_tenant_and_user(store: Store) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    bob = await _user(store, "bob@example.com")
    with pytest.raises(DataRejected):
        await store.add_member("tnt_nobody", bob, Role.MEMBER)
    with pytest.raises(DataRejected):
        await store.add_member(tenant_id, "usr_nobody", Role.MEMBER)


async def test_memberships_list_every_tenant_of_a_user(store: Store) -> None:
    first, owner = await _tenant_with_owner(store)
    second = (await store.create_tenant(_id("tnt"), "Other")).id
    await store.add_member(second, owner, Role.VIEWER)
    assert [(m.tenant_id, m.role) for m in await store.memberships(owner)] == [
        (first, Role.OWNER),
        (second, Role.VIEWER),
    ]
    assert [m.user_id for m in await store.list_members(second)] == [owner]


async def test_the_last_owner_is_neither_demoted_nor_removed(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    with pytest.raises(ConflictError, match="last owner"):
        await store.set_role(tenant_id, owner, Role.ADMIN)
    with pytest.raises(ConflictError, match="last owner"):
        await store.remove_member(tenant_id, owner)
    assert await store.get_role(tenant_id, owner) is Role.OWNER
    # Making an owner an owner again changes nothing and is allowed.
    assert await store.set_role(tenant_id, owner, Role.OWNER) is not None

    bob = await _user(store, "bob@example.com")
    await store.add_member(tenant_id, bob, Role.OWNER)
    assert await store.set_role(tenant_id, owner, Role.MEMBER) is not None
    with pytest.raises(ConflictError, match="last owner"):
        await store.remove_member(tenant_id, bob)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    store: Store, peer_store: Store
) -> None:
    tenant_id, ann = await _tenant_with_owner(store)
    bob = await _user(store, "bob@example.com")
    await store.add_member(tenant_id, bob, Role.OWNER)
    results = await asyncio.gather(
        store.set_role(tenant_id, ann, Role.ADMIN),
        peer_store.remove_member(tenant_id, bob),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ConflictError) for r in results) == 1, results
    owners = [m for m in await store.list_members(tenant_id) if m.role is Role.OWNER]
    assert len(owners) == 1


# -- invitations -----------------------------------------------------------------------------
async def test_an_invitation_is_created_found_listed_and_accepted_once(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    token = _hash()
    before = time.time()
    invitation = await store.create_invitation(
        "inv_1", tenant_id, "bob@example.com", Role.MEMBER, token, owner, 3600
    )
    assert (invitation.id, invitation.tenant_id, invitation.email) == (
        "inv_1",
        tenant_id,
        "bob@example.com",
    )
    assert (invitation.role, invitation.invited_by) == (Role.MEMBER, owner)
    assert (invitation.accepted_at, invitation.revoked) == (None, False)
    assert invitation.expires_at == pytest.approx(invitation.created_at + 3600)
    assert before - 1 <= invitation.created_at <= time.time() + 1
    assert await store.find_invitation(token) == invitation
    assert await store.find_invitation(_hash()) is None
    assert await store.list_invitations(tenant_id) == [invitation]

    bob = await _user(store, "bob@example.com")
    member = await store.accept_invitation(token, bob)
    assert member is not None
    assert (member.tenant_id, member.user_id, member.role) == (tenant_id, bob, Role.MEMBER)
    accepted = await store.find_invitation(token)
    assert accepted is not None
    assert accepted.accepted_at is not None

    carol = await _user(store, "carol@example.com")
    assert await store.accept_invitation(token, carol) is None
    assert await store.get_role(tenant_id, carol) is None
    assert not await store.revoke_invitation(tenant_id, "inv_1")


async def test_two_acceptances_at_once_admit_one_user(store: Store, peer_store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    token = _hash()
    await store.create_invitation(
        _id("inv"), tenant_id, "x@example.com", Role.VIEWER, token, owner, 60
    )
    bob = await _user(store, "bob@example.com")
    carol = await _user(store, "carol@example.com")
    results = await asyncio.gather(
        store.accept_invitation(token, bob), peer_store.accept_invitation(token, carol)
    )
    assert sum(r is not None for r in results) == 1
    assert len(await store.list_members(tenant_id)) == 2


async def test_a_revoked_invitation_is_not_accepted(store: Store) -> None:
    tenant_id, _owner = await _tenant_with_owner(store)
    other_tenant, _ = await _tenant_with_owner(store, "other@example.com")
    token = _hash()
    await store.create_invitation("inv_1", tenant_id, "b@example.com", Role.ADMIN, token, None, 60)
    assert not await store.revoke_invitation(other_tenant, "inv_1")
    assert await store.revoke_invitation(tenant_id, "inv_1")
    assert not await store.revoke_invitation(tenant_id, "inv_1")
    found = await store.find_invitation(token)
    assert found is not None
    assert found.revoked
    bob = await _user(store, "bob@example.com")
    assert await store.accept_invitation(token, bob) is None
    assert await store.get_role(tenant_id, bob) is None


async def test_an_expired_invitation_is_not_accepted(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    token = _hash()
    await store.create_invitation(
        "inv_1", tenant_id, "b@example.com", Role.MEMBER, token, owner, SHORT_TTL_S
    )
    bob = await _user(store, "bob@example.com")
    await asyncio.sleep(SHORT_TTL_S + 0.1)
    assert await store.accept_invitation(token, bob) is None
    assert await store.get_role(tenant_id, bob) is None
    found = await store.find_invitation(token)
    assert found is not None
    assert found.accepted_at is None


async def test_accepting_keeps_the_higher_role(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    bob = await _user(store, "bob@example.com")
    await store.add_member(tenant_id, bob, Role.ADMIN)
    lower, higher = _hash(), _hash()
    await store.create_invitation("inv_1", tenant_id, "b@x.io", Role.VIEWER, lower, owner, 60)
    await store.create_invitation("inv_2", tenant_id, "b@x.io", Role.OWNER, higher, owner, 60)
    kept = await store.accept_invitation(lower, bob)
    assert kept is not None
    assert kept.role is Role.ADMIN
    raised = await store.accept_invitation(higher, bob)
    assert raised is not None
    assert raised.role is Role.OWNER
    assert [i.id for i in await store.list_invitations(tenant_id)] == ["inv_2", "inv_1"]


async def test_an_invitation_needs_its_tenant_and_a_token_of_its_own(store: Store) -> None:
    tenant_id, owner = await _tenant_with_owner(store)
    token = _hash()
    with pytest.raises(DataRejected, match="tnt_nobody"):
        await store.create_invitation("inv_1", "tnt_nobody", "b@x.io", Role.MEMBER, token, None, 60)
    await store.create_invitation("inv_1", tenant_id, "b@x.io", Role.MEMBER, token, owner, 60)
    with pytest.raises(ConflictError):
        await store.create_invitation("inv_2", tenant_id, "c@x.io", Role.MEMBER, token, owner, 60)


# -- refresh tokens --------------------------------------------------------------------------
async def test_a_refresh_token_rotates_within_its_family(store: Store) -> None:
    tenant_id, user = await _tenant_with_owner(store)
    first = await store.add_refresh_token(_refresh(user, tenant_id))
    assert first.expires_at == pytest.approx(first.created_at + 3600)
    assert (first.rotated_at, first.revoked_at) == (None, None)

    # The successor's user, tenant and family come from the old row, not from ``new``.
    stranger = _refresh("usr_other", None)
    rotation = await store.rotate_refresh_token(first.token_hash, stranger)
    assert rotation.outcome is RotateOutcome.ROTATED
    assert rotation.token == first

    second = await store.rotate_refresh_token(stranger.token_hash, _refresh(user, tenant_id))
    assert second.outcome is RotateOutcome.ROTATED
    assert second.token is not None
    assert (second.token.id, second.token.family_id) == (stranger.id, first.family_id)
    assert (second.token.user_id, second.token.tenant_id) == (user, tenant_id)


async def test_a_reused_refresh_token_revokes_its_family(store: Store) -> None:
    _, user = await _tenant_with_owner(store)
    first = await store.add_refresh_token(_refresh(user, None))
    successor = _refresh(user, None)
    assert (await store.rotate_refresh_token(first.token_hash, successor)).outcome is (
        RotateOutcome.ROTATED
    )
    reuse = await store.rotate_refresh_token(first.token_hash, _refresh(user, None))
    assert reuse.outcome is RotateOutcome.REUSED
    assert reuse.token is not None
    assert reuse.token.id == first.id
    # The successor was revoked with the family, and so is the reused token now.
    later = await store.rotate_refresh_token(successor.token_hash, _refresh(user, None))
    assert later.outcome is RotateOutcome.REVOKED
    again = await store.rotate_refresh_token(first.token_hash, _refresh(user, None))
    assert again.outcome is RotateOutcome.REVOKED


async def test_an_unknown_refresh_token_is_unknown(store: Store) -> None:
    _, user = await _tenant_with_owner(store)
    rotation = await store.rotate_refresh_token(_hash(), _refresh(user, None))
    assert (rotation.outcome, rotation.token) == (RotateOutcome.UNKNOWN, None)


async def test_two_rotations_of_one_token_at_once_are_one_rotation_and_one_reuse(
    store: Store, peer_store: Store
) -> None:
    tenant_id, user = await _tenant_with_owner(store)
    token = await store.add_refresh_token(_refresh(user, tenant_id))
    first, second = _refresh(user, tenant_id), _refresh(user, tenant_id)
    results = await asyncio.gather(
        store.rotate_refresh_token(token.token_hash, first),
        peer_store.rotate_refresh_token(token.token_hash, second),
    )
    assert sorted(r.outcome for r in results) == [RotateOutcome.REUSED, RotateOutcome.ROTATED]
    # Whichever successor was stored was revoked by the reuse.
    winner = first if results[0].outcome is RotateOutcome.ROTATED else second
    after = await store.rotate_refresh_token(winner.token_hash, _refresh(user, tenant_id))
    assert after.outcome is RotateOutcome.REVOKED


async def test_an_expired_refresh_token_does_not_rotate(store: Store) -> None:
    _, user = await _tenant_with_owner(store)
    token = await store.add_refresh_token(_refresh(user, None, ttl_s=SHORT_TTL_S))
    await asyncio.sleep(SHORT_TTL_S + 0.1)
    successor = _refresh(user, None)
    rotation = await store.rotate_refresh_token(token.token_hash, successor)
    assert rotation.outcome is RotateOutcome.EXPIRED
    after = await store.rotate_refresh_token(successor.token_hash, _refresh(user, None))
    assert after.outcome is RotateOutcome.UNKNOWN


async def test_logout_revokes_the_family_of_the_token(store: Store) -> None:
    _, user = await _tenant_with_owner(store)
    first = await store.add_refresh_token(_refresh(user, None))
    successor = _refresh(user, None)
    await store.rotate_refresh_token(first.token_hash, successor)
    other = await store.add_refresh_token(_refresh(user, None))
    assert await store.revoke_refresh_token(first.token_hash)
    assert not await store.revoke_refresh_token(_hash())
    revoked = await store.rotate_refresh_token(successor.token_hash, _refresh(user, None))
    assert revoked.outcome is RotateOutcome.REVOKED
    alive = await store.rotate_refresh_token(other.token_hash, _refresh(user, None))
    assert alive.outcome is RotateOutcome.ROTATED


async def test_revoking_a_family_counts_the_tokens_revoked(store: Store) -> None:
    _, user = await _tenant_with_owner(store)
    first = await store.add_refresh_token(_refresh(user, None))
    await store.rotate_refresh_token(first.token_hash, _refresh(user, None))
    assert await store.revoke_refresh_family(first.family_id) == 2
    assert await store.revoke_refresh_family(first.family_id) == 0


async def test_a_users_tokens_are_revoked_per_tenant_or_all(store: Store) -> None:
    first, user = await _tenant_with_owner(store)
    second = (await store.create_tenant(_id("tnt"), "Other")).id
    in_first = await store.add_refresh_token(_refresh(user, first))
    in_second = await store.add_refresh_token(_refresh(user, second))
    tenantless = await store.add_refresh_token(_refresh(user, None))
    other_user = await _user(store, "bob@example.com")
    others = await store.add_refresh_token(_refresh(other_user, first))

    assert await store.revoke_user_tokens(user, first) == 1
    outcomes = [
        (await store.rotate_refresh_token(t.token_hash, _refresh(user, None))).outcome
        for t in (in_first, in_second)
    ]
    assert outcomes == [RotateOutcome.REVOKED, RotateOutcome.ROTATED]
    # Not revoked yet: the rotated token of the second tenant, its successor and the
    # tenantless one.
    assert await store.revoke_user_tokens(user) == 3
    rotation = await store.rotate_refresh_token(tenantless.token_hash, _refresh(user, None))
    assert rotation.outcome is RotateOutcome.REVOKED
    kept = await store.rotate_refresh_token(others.token_hash, _refresh(other_user, None))
    assert kept.outcome is RotateOutcome.ROTATED


# -- API keys --------------------------------------------------------------------------------
async def test_an_api_key_is_found_by_prefix_touched_and_revoked(store: Store) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    new = _api_key(tenant_id)
    key = await store.create_api_key(new)
    assert (key.id, key.tenant_id, key.prefix, key.secret_hash) == (
        new.id,
        tenant_id,
        new.prefix,
        new.secret_hash,
    )
    assert (key.name, key.scopes, key.created_by) == ("ci", (READ, WRITE), None)
    assert (key.last_used_at, key.expires_at, key.revoked_at) == (None, None, None)
    assert await store.find_api_key(new.prefix) == key
    assert await store.find_api_key("nope") is None

    await store.touch_api_key(key.id)
    touched = await store.find_api_key(new.prefix)
    assert touched is not None
    assert touched.last_used_at is not None
    assert touched.last_used_at >= key.created_at

    other_tenant, _ = await _tenant_with_owner(store, "other@example.com")
    assert not await store.revoke_api_key(key.id, other_tenant)
    assert await store.revoke_api_key(key.id, tenant_id)
    assert not await store.revoke_api_key(key.id, tenant_id)
    revoked = await store.find_api_key(new.prefix)
    assert revoked is not None
    assert revoked.revoked_at is not None


async def test_keys_looked_up_at_once_each_get_their_own_and_a_revocation_before_counts(
    store: Store, peer_store: Store
) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    keys = [await store.create_api_key(_api_key(tenant_id)) for _ in range(3)]
    prefixes = [k.prefix for k in keys] * 5 + ["nope", keys[0].prefix]
    found = await asyncio.gather(*(store.find_api_key(p) for p in prefixes))
    assert found == [*keys * 5, None, keys[0]]

    # A key revoked by another process before the calls began is revoked for each of them,
    # whichever look-up they share.
    assert await peer_store.revoke_api_key(keys[1].id, tenant_id)
    again = await asyncio.gather(*(store.find_api_key(keys[1].prefix) for _ in range(10)))
    assert all(k is not None and k.revoked_at is not None for k in again)


async def test_an_operator_revokes_a_key_of_any_tenant(store: Store) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    key = await store.create_api_key(_api_key(tenant_id))
    assert await store.revoke_api_key(key.id, None)
    assert not await store.revoke_api_key(key.id, None)


async def test_an_api_key_with_a_ttl_shows_when_it_expires(store: Store) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    key = await store.create_api_key(_api_key(tenant_id, ttl_s=SHORT_TTL_S))
    assert key.expires_at == pytest.approx(key.created_at + SHORT_TTL_S)
    found = await store.find_api_key(key.prefix)
    assert found is not None
    assert found.expires_at == key.expires_at


async def test_api_keys_are_listed_per_tenant_or_all(store: Store) -> None:
    first, _ = await _tenant_with_owner(store)
    second, _ = await _tenant_with_owner(store, "other@example.com")
    a = await store.create_api_key(_api_key(first))
    b = await store.create_api_key(_api_key(second))
    c = await store.create_api_key(_api_key(first))
    assert [k.id for k in await store.list_api_keys(first)] == [c.id, a.id]
    assert [k.id for k in await store.list_api_keys(second)] == [b.id]
    assert [k.id for k in await store.list_api_keys(None)] == [c.id, b.id, a.id]


async def test_an_api_key_prefix_is_unique_and_its_tenant_must_exist(store: Store) -> None:
    tenant_id, _ = await _tenant_with_owner(store)
    key = await store.create_api_key(_api_key(tenant_id))
    clash = _api_key(tenant_id)
    with pytest.raises(ConflictError, match="prefix"):
        await store.create_api_key(
            NewApiKey(clash.id, tenant_id, key.prefix, _hash(), "x", (READ,), None, None)
        )
    with pytest.raises(DataRejected, match="tnt_nobody"):
        await store.create_api_key(_api_key("tnt_nobody"))


# -- signing keys ----------------------------------------------------------------------------
async def test_ensure_stores_the_first_signing_key_only(store: Store) -> None:
    assert await store.signing_keys() == []
    first = _signing_key("sk_1")
    [stored] = await store.ensure_signing_key(first)
    assert (stored.kid, stored.algorithm, stored.retired_at) == ("sk_1", "EdDSA", None)
    assert (stored.private_pem, stored.public_pem) == ("private-pem", "public-pem")
    assert stored.created_at > 0  # the store's clock, not the candidate's
    assert await store.ensure_signing_key(_signing_key("sk_2")) == [stored]
    assert await store.signing_keys() == [stored]


async def test_a_rotation_retires_the_active_signing_key(store: Store) -> None:
    [first] = await store.ensure_signing_key(_signing_key("sk_1"))
    keys = await store.add_signing_key(_signing_key("sk_2"))
    assert [(k.kid, k.retired_at is None) for k in keys] == [("sk_2", True), ("sk_1", False)]
    assert await store.signing_keys() == keys
    with pytest.raises(ConflictError, match="sk_1"):
        await store.add_signing_key(_signing_key("sk_1"))

    assert await store.retire_signing_key("sk_2")
    assert not await store.retire_signing_key("sk_2")
    assert not await store.retire_signing_key("sk_nobody")
    assert all(k.retired_at is not None for k in await store.signing_keys())
    [newest, *_] = await store.ensure_signing_key(_signing_key("sk_3"))
    assert (newest.kid, newest.retired_at) == ("sk_3", None)
    assert first.kid in {k.kid for k in await store.signing_keys()}


async def test_two_processes_ensuring_a_signing_key_at_once_leave_one_active(
    store: Store, peer_store: Store
) -> None:
    for round_ in range(5):
        results = await asyncio.gather(
            store.ensure_signing_key(_signing_key(f"sk_a{round_}")),
            peer_store.ensure_signing_key(_signing_key(f"sk_b{round_}")),
        )
        active = [[k.kid for k in keys if k.retired_at is None] for keys in results]
        assert len(active[0]) == 1, results
        assert active[0] == active[1]
        assert await store.retire_signing_key(active[0][0])
    assert len(await store.signing_keys()) == 5


# -- hostile text ----------------------------------------------------------------------------
async def test_text_holding_nul_is_refused_alike_and_nothing_is_stored(store: Store) -> None:
    # PostgreSQL's text cannot hold NUL; SQLite could, and must not keep what the other
    # store refuses.
    with pytest.raises(DataRejected, match=r"create_user: email holds a NUL"):
        await store.create_user(_id("usr"), "ann\x00@example.com", "hash")
    with pytest.raises(DataRejected, match=r"signup: tenant_name holds a NUL"):
        await store.signup(_id("tnt"), "Ac\x00me", _id("usr"), "bob@example.com", "hash")
    with pytest.raises(DataRejected, match=r"create_tenant: name holds a NUL"):
        await store.create_tenant("acme", "\x00")
    assert await store.list_users() == []
    assert await store.list_tenants() == []

    tenant_id, _ = await _tenant_with_owner(store)
    key = _api_key(tenant_id)
    bad_key = NewApiKey(
        key.id, tenant_id, key.prefix, key.secret_hash, "ci", (READ, "x\x00"), None, None
    )
    with pytest.raises(DataRejected, match=r"create_api_key: new\.scopes\[1\] holds a NUL"):
        await store.create_api_key(bad_key)
    assert await store.list_api_keys(tenant_id) == []


async def test_look_ups_with_nul_are_refused_alike(store: Store) -> None:
    await _tenant_with_owner(store)
    with pytest.raises(DataRejected, match=r"get_user_by_email: email holds a NUL"):
        await store.get_user_by_email("owner@example.com\x00")
    with pytest.raises(DataRejected, match=r"find_api_key: prefix holds a NUL"):
        await store.find_api_key("abc\x00")
    with pytest.raises(DataRejected, match=r"get_tenant: tenant_id holds a NUL"):
        await store.get_tenant("t\x00")
    # The store is fine after a refusal.
    assert await store.get_user_by_email("owner@example.com") is not None
