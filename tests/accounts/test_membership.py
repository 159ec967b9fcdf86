"""Invitations, members and roles: who may invite, promote, demote and remove whom;
the last owner stays; each role holds its scopes."""

from __future__ import annotations

import asyncio

import pytest
from accounts_support import PASSWORD, account_settings, started

from conveyor.accounts import (
    Accounts,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Principal,
    Session,
)
from conveyor.store.accounts import ADMIN, READ, WRITE, Role
from conveyor.store.base import Store


async def _member(accounts: Accounts, tenant_id: str, email: str, role: Role) -> Principal:
    """A user of ``tenant_id`` with ``role``, logged in, as the principal of its token."""
    await accounts.create_user(email, PASSWORD)
    await accounts.add_member(tenant_id, email, role)
    session = await accounts.login(email, PASSWORD, tenant_id=tenant_id)
    return await accounts.authenticate(session.access_token)


# -- roles -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "scopes"),
    [
        (Role.VIEWER, {READ}),
        (Role.MEMBER, {READ, WRITE}),
        (Role.ADMIN, {READ, WRITE, ADMIN}),
        (Role.OWNER, {READ, WRITE, ADMIN}),
    ],
)
async def test_a_users_token_holds_its_roles_scopes(
    accounts: Accounts, owner: Session, role: Role, scopes: set[str]
) -> None:
    assert owner.tenant_id is not None
    principal = await _member(accounts, owner.tenant_id, "u@example.com", role)

    assert principal.role is role
    assert principal.scopes == scopes


# -- invitations -------------------------------------------------------------------------
async def test_an_invitation_is_accepted_by_signing_up(
    accounts: Accounts, owner_principal: Principal
) -> None:
    invitation, token = await accounts.invite(owner_principal, "New@Example.com", Role.MEMBER)

    assert invitation.email == "new@example.com"
    assert invitation.invited_by == owner_principal.user_id
    assert token.startswith("cvi_")
    assert token not in repr(invitation)
    session = await accounts.signup_invited(token, PASSWORD)

    assert (session.tenant_id, session.role) == (owner_principal.tenant_id, Role.MEMBER)
    assert session.user.email == "new@example.com"
    [listed] = await accounts.list_invitations(owner_principal)
    assert listed.accepted_at is not None
    # Once only.
    with pytest.raises(NotFound, match="invitation"):
        await accounts.signup_invited(token, PASSWORD)


async def test_an_invitation_is_accepted_by_logging_in(
    accounts: Accounts, owner_principal: Principal
) -> None:
    elsewhere = await accounts.signup("someone@example.com", PASSWORD, "Elsewhere")
    _, token = await accounts.invite(owner_principal, "someone@example.com", Role.ADMIN)
    someone = await accounts.authenticate(elsewhere.access_token)

    member = await accounts.accept(someone, token)

    assert (member.tenant_id, member.role) == (owner_principal.tenant_id, Role.ADMIN)
    session = await accounts.login(
        "someone@example.com", PASSWORD, tenant_id=owner_principal.tenant_id
    )
    assert session.role is Role.ADMIN
    with pytest.raises(NotFound, match="invitation"):
        await accounts.accept(someone, token)


async def test_signing_up_with_an_email_that_has_an_account_says_log_in(
    accounts: Accounts, owner_principal: Principal
) -> None:
    await accounts.signup("someone@example.com", PASSWORD, "Elsewhere")
    _, token = await accounts.invite(owner_principal, "someone@example.com", Role.MEMBER)

    with pytest.raises(Conflict, match="log in"):
        await accounts.signup_invited(token, PASSWORD)


async def test_an_invitation_is_for_its_email_only(
    accounts: Accounts, owner_principal: Principal
) -> None:
    intruder = await accounts.signup("intruder@example.com", PASSWORD, "Intruders")
    _, token = await accounts.invite(owner_principal, "someone@example.com", Role.MEMBER)

    with pytest.raises(Forbidden, match="another email"):
        await accounts.accept(await accounts.authenticate(intruder.access_token), token)
    assert len(await accounts.members(owner_principal)) == 1


async def test_an_api_key_cannot_accept_an_invitation(
    accounts: Accounts, owner_principal: Principal
) -> None:
    _, key = await accounts.create_api_key(owner_principal, "ci", [READ])
    _, token = await accounts.invite(owner_principal, "someone@example.com", Role.MEMBER)

    with pytest.raises(Forbidden, match="API key"):
        await accounts.accept(await accounts.authenticate(key), token)


async def test_an_expired_invitation_is_refused(store: Store) -> None:
    accounts = await started(store, account_settings(invitation_seconds=0.3))
    owner = await accounts.signup("owner@example.com", PASSWORD, "Acme")
    _, token = await accounts.invite(
        await accounts.authenticate(owner.access_token), "new@example.com", Role.MEMBER
    )
    await asyncio.sleep(0.5)

    with pytest.raises(NotFound, match="expired"):
        await accounts.signup_invited(token, PASSWORD)
    assert await store.get_user_by_email("new@example.com") is None


async def test_a_revoked_invitation_is_refused(
    accounts: Accounts, owner_principal: Principal
) -> None:
    invitation, token = await accounts.invite(owner_principal, "new@example.com", Role.MEMBER)

    await accounts.revoke_invitation(owner_principal, invitation.id)

    with pytest.raises(NotFound, match="revoked"):
        await accounts.signup_invited(token, PASSWORD)
    with pytest.raises(NotFound, match="invitation"):
        await accounts.revoke_invitation(owner_principal, invitation.id)
    [listed] = await accounts.list_invitations(owner_principal)
    assert listed.revoked


async def test_an_unknown_invitation_token_is_not_found(accounts: Accounts) -> None:
    for token in ("cvi_nothing", "", "\ud800", "x" * 10_000):
        with pytest.raises(NotFound, match="invitation"):
            await accounts.signup_invited(token, PASSWORD)


async def test_only_an_owner_invites_an_owner(
    accounts: Accounts, owner: Session, owner_principal: Principal
) -> None:
    assert owner.tenant_id is not None
    admin = await _member(accounts, owner.tenant_id, "admin@example.com", Role.ADMIN)

    with pytest.raises(Forbidden, match="owner"):
        await accounts.invite(admin, "new@example.com", Role.OWNER)
    await accounts.invite(admin, "new@example.com", Role.ADMIN)
    await accounts.invite(owner_principal, "boss@example.com", Role.OWNER)


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
async def test_members_and_viewers_manage_nothing(
    accounts: Accounts, owner: Session, role: Role
) -> None:
    assert owner.tenant_id is not None
    user = await _member(accounts, owner.tenant_id, "u@example.com", role)

    with pytest.raises(Forbidden, match="admin"):
        await accounts.invite(user, "new@example.com", Role.VIEWER)
    with pytest.raises(Forbidden, match="admin"):
        await accounts.list_invitations(user)
    with pytest.raises(Forbidden, match="admin"):
        await accounts.members(user)
    with pytest.raises(Forbidden, match="admin"):
        await accounts.set_role(user, owner.user.id, Role.VIEWER)
    with pytest.raises(Forbidden, match="admin"):
        await accounts.remove_member(user, owner.user.id)


async def test_another_tenant_is_not_found_for_its_ids(
    accounts: Accounts, owner: Session, owner_principal: Principal
) -> None:
    other = await accounts.signup("other@example.com", PASSWORD, "Other")
    other_owner = await accounts.authenticate(other.access_token)
    invitation, _ = await accounts.invite(owner_principal, "new@example.com", Role.MEMBER)

    with pytest.raises(NotFound):
        await accounts.members(other_owner, tenant_id=owner.tenant_id)
    with pytest.raises(NotFound):
        await accounts.revoke_invitation(other_owner, invitation.id)
    with pytest.raises(NotFound):
        await accounts.set_role(other_owner, owner.user.id, Role.VIEWER)
    with pytest.raises(NotFound):
        await accounts.remove_member(other_owner, owner.user.id)
    assert await accounts.list_invitations(other_owner) == []


# -- members -----------------------------------------------------------------------------
async def test_members_are_listed_changed_and_removed(
    accounts: Accounts, owner: Session, owner_principal: Principal
) -> None:
    assert owner.tenant_id is not None
    viewer = await _member(accounts, owner.tenant_id, "v@example.com", Role.VIEWER)
    assert viewer.user_id is not None

    listed = await accounts.members(owner_principal)
    assert [(m.email, m.role) for m in listed] == [
        ("owner@example.com", Role.OWNER),
        ("v@example.com", Role.VIEWER),
    ]
    changed = await accounts.set_role(owner_principal, viewer.user_id, Role.ADMIN)
    assert changed.role is Role.ADMIN
    session = await accounts.login("v@example.com", PASSWORD)
    assert (await accounts.authenticate(session.access_token)).scopes == {READ, WRITE, ADMIN}

    await accounts.remove_member(owner_principal, viewer.user_id)

    assert [m.email for m in await accounts.members(owner_principal)] == ["owner@example.com"]
    with pytest.raises(NotFound, match="member"):
        await accounts.remove_member(owner_principal, viewer.user_id)
    with pytest.raises(NotFound, match="member"):
        await accounts.set_role(owner_principal, viewer.user_id, Role.MEMBER)


async def test_the_last_owner_is_neither_demoted_nor_removed(
    accounts: Accounts, owner: Session, owner_principal: Principal
) -> None:
    with pytest.raises(Conflict, match="last owner"):
        await accounts.set_role(owner_principal, owner.user.id, Role.ADMIN)
    with pytest.raises(Conflict, match="last owner"):
        await accounts.remove_member(owner_principal, owner.user.id)
    assert [m.role for m in await accounts.members(owner_principal)] == [Role.OWNER]

    # With a second owner, the first may step down.
    assert owner.tenant_id is not None
    await _member(accounts, owner.tenant_id, "o2@example.com", Role.OWNER)
    await accounts.set_role(owner_principal, owner.user.id, Role.ADMIN)


async def test_an_admin_cannot_make_unmake_or_remove_owners(
    accounts: Accounts, owner: Session
) -> None:
    assert owner.tenant_id is not None
    admin = await _member(accounts, owner.tenant_id, "admin@example.com", Role.ADMIN)
    member = await _member(accounts, owner.tenant_id, "m@example.com", Role.MEMBER)
    assert member.user_id is not None

    with pytest.raises(Forbidden, match="owner"):
        await accounts.set_role(admin, member.user_id, Role.OWNER)
    with pytest.raises(Forbidden, match="owner"):
        await accounts.set_role(admin, owner.user.id, Role.MEMBER)
    with pytest.raises(Forbidden, match="owner"):
        await accounts.remove_member(admin, owner.user.id)
    # What an admin may do.
    assert (await accounts.set_role(admin, member.user_id, Role.VIEWER)).role is Role.VIEWER
    await accounts.remove_member(admin, member.user_id)


async def test_an_operator_manages_any_tenant_by_naming_it(
    accounts: Accounts, owner: Session
) -> None:
    await accounts.create_operator("op@example.com", PASSWORD)
    operator = await accounts.authenticate(
        (await accounts.login("op@example.com", PASSWORD)).access_token
    )

    with pytest.raises(Invalid, match="tenant_id"):
        await accounts.members(operator)
    listed = await accounts.members(operator, tenant_id=owner.tenant_id)
    assert [m.user_id for m in listed] == [owner.user.id]
    await accounts.invite(operator, "boss@example.com", Role.OWNER, tenant_id=owner.tenant_id)
    with pytest.raises(NotFound, match="tenant"):
        await accounts.invite(operator, "x@example.com", Role.VIEWER, tenant_id="tnt_none")
