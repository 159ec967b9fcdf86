"""Hostile input to every verb of the service, on both stores: NUL bytes, lone
surrogates, control characters, very long text, bad emails. Each call succeeds or raises
one of the service's errors (:class:`AccountError`), never a store or Python error; an
:class:`Invalid` names its field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from accounts_support import PASSWORD

from conveyor.accounts import (
    AccountError,
    Accounts,
    Invalid,
    Principal,
    Session,
    Unauthenticated,
)
from conveyor.store.accounts import READ, Role
from hostile import SPECIAL_TEXT

HOSTILE = [*SPECIAL_TEXT, "a@b.c\x00", "x@\ud800.com", "@example.com", "a@@b.c", "a" * 300]

Call = Callable[[Accounts, Principal, str, str], Awaitable[object]]

VERBS: dict[str, Call] = {
    "signup.email": lambda a, p, t, x: a.signup(x, PASSWORD, "Acme"),
    "signup.password": lambda a, p, t, x: a.signup("n@example.com", x, "Acme"),
    "signup.tenant_name": lambda a, p, t, x: a.signup("n@example.com", PASSWORD, x),
    "signup_invited.token": lambda a, p, t, x: a.signup_invited(x, PASSWORD),
    "login.email": lambda a, p, t, x: a.login(x, PASSWORD),
    "login.password": lambda a, p, t, x: a.login("owner@example.com", x),
    "login.tenant_id": lambda a, p, t, x: a.login("owner@example.com", PASSWORD, x),
    "refresh": lambda a, p, t, x: a.refresh(x),
    "logout": lambda a, p, t, x: a.logout(x),
    "authenticate": lambda a, p, t, x: a.authenticate(x),
    "authenticate.key": lambda a, p, t, x: a.authenticate("cvk_" + x),
    "invite.email": lambda a, p, t, x: a.invite(p, x, Role.MEMBER),
    "list_invitations.tenant_id": lambda a, p, t, x: a.list_invitations(p, x),
    "revoke_invitation": lambda a, p, t, x: a.revoke_invitation(p, x),
    "accept": lambda a, p, t, x: a.accept(p, x),
    "members.tenant_id": lambda a, p, t, x: a.members(p, x),
    "set_role": lambda a, p, t, x: a.set_role(p, x, Role.VIEWER),
    "remove_member": lambda a, p, t, x: a.remove_member(p, x),
    "create_api_key.name": lambda a, p, t, x: a.create_api_key(p, x, [READ]),
    "create_api_key.scopes": lambda a, p, t, x: a.create_api_key(p, "ci", [x]),
    "list_api_keys.tenant_id": lambda a, p, t, x: a.list_api_keys(p, x),
    "revoke_api_key": lambda a, p, t, x: a.revoke_api_key(p, x),
    "create_tenant.name": lambda a, p, t, x: a.create_tenant(x),
    "create_tenant.tenant_id": lambda a, p, t, x: a.create_tenant("Acme", x),
    "tenant": lambda a, p, t, x: a.tenant(x),
    "set_tenant_disabled": lambda a, p, t, x: a.set_tenant_disabled(x, True),
    "set_tenant_rate_limit.tenant_id": lambda a, p, t, x: a.set_tenant_rate_limit(x, None),
    "set_tenant_rate_limit.rate": lambda a, p, t, x: a.set_tenant_rate_limit(t, x),
    "create_user.email": lambda a, p, t, x: a.create_user(x, PASSWORD),
    "create_user.password": lambda a, p, t, x: a.create_user("n@example.com", x),
    "user": lambda a, p, t, x: a.user(x),
    "user.id": lambda a, p, t, x: a.user("usr_" + x),
    "set_user_disabled": lambda a, p, t, x: a.set_user_disabled(x, False),
    "set_password.password": lambda a, p, t, x: a.set_password("owner@example.com", x),
    "add_member.tenant_id": lambda a, p, t, x: a.add_member(x, "owner@example.com", Role.VIEWER),
    "add_member.user": lambda a, p, t, x: a.add_member(t, x, Role.VIEWER),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
async def test_hostile_text_is_refused_cleanly(
    accounts: Accounts, owner: Session, owner_principal: Principal, verb: str
) -> None:
    assert owner.tenant_id is not None
    crashes = []
    unnamed = []
    for text in HOSTILE:
        try:
            await VERBS[verb](accounts, owner_principal, owner.tenant_id, text)
        except Invalid as exc:
            if not (exc.field.isidentifier() and str(exc).startswith(f"{exc.field}: ")):
                unnamed.append(str(exc))
        except AccountError:
            pass
        except Exception as exc:
            # What the test looks for: any other error is a crash of the service.
            crashes.append((text[:40], f"{type(exc).__name__}: {exc}"[:200]))
    assert crashes == []
    assert unnamed == []
    # The owner's own account is intact.
    assert (await accounts.authenticate(owner.access_token)).user_id == owner.user.id


@pytest.mark.parametrize(
    ("verb", "text", "field"),
    [
        ("signup.email", "a\x00@example.com", "email"),
        ("signup.email", "x@\ud800.com", "email"),
        ("signup.email", "not-an-email", "email"),
        ("signup.email", "a" * 250 + "@example.com", "email"),
        ("signup.password", "a\x00" * 8, "password"),
        ("signup.password", "\ud800" * 8, "password"),
        ("signup.password", "short", "password"),
        ("signup.password", "x" * 5000, "password"),
        ("signup.tenant_name", "", "tenant_name"),
        ("signup.tenant_name", "Acme\x00", "tenant_name"),
        ("signup.tenant_name", "\ud800", "tenant_name"),
        ("signup.tenant_name", "x" * 201, "tenant_name"),
        ("login.tenant_id", "t\x00", "tenant_id"),
        ("invite.email", "\ud800@x.com", "email"),
        ("set_role", "usr_\x00", "user_id"),
        ("remove_member", "x" * 5000, "user_id"),
        ("revoke_api_key", "key_\ud800", "key_id"),
        ("revoke_invitation", "inv\x00", "invitation_id"),
        ("create_api_key.name", "\x1b[31m", "name"),
        ("create_api_key.scopes", "\x00", "scopes"),
        ("create_tenant.tenant_id", "a b", "tenant_id"),
        ("set_tenant_rate_limit.rate", "0/minute", "rate_limit"),
        ("set_tenant_rate_limit.rate", "1/minute;1/second", "rate_limit"),
        ("set_tenant_rate_limit.rate", "1" * 5000 + "/minute", "rate_limit"),
        ("set_tenant_rate_limit.rate", "\ud800", "rate_limit"),
        ("user", "a\x00@b.c", "user"),
        ("user.id", "\x00", "user"),
        ("members.tenant_id", "\ud800", "tenant_id"),
    ],
    ids=repr,
)
async def test_bad_input_is_invalid_naming_the_field(
    accounts: Accounts,
    owner: Session,
    owner_principal: Principal,
    verb: str,
    text: str,
    field: str,
) -> None:
    assert owner.tenant_id is not None
    with pytest.raises(Invalid) as refused:
        await VERBS[verb](accounts, owner_principal, owner.tenant_id, text)

    assert refused.value.field == field
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:20]))
async def test_hostile_login_is_the_one_refusal(
    accounts: Accounts, owner: Session, text: str
) -> None:
    for email, password in ((text, PASSWORD), ("owner@example.com", text), (text, text)):
        with pytest.raises(Unauthenticated) as refused:
            await accounts.login(email, password)
        assert str(refused.value) == Unauthenticated.MESSAGE
