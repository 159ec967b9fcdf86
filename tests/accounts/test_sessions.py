"""Sessions: signup, login, refresh rotation and family revocation, logout, disabled
users and tenants, password rehash and the absence of user enumeration."""

from __future__ import annotations

import asyncio
import time

import pytest
from accounts_support import PASSWORD, RawRows, account_settings, started

from conveyor.accounts import (
    Accounts,
    ChooseTenant,
    Conflict,
    Forbidden,
    Session,
    Unauthenticated,
)
from conveyor.accounts import passwords as passwords_module
from conveyor.store.accounts import ADMIN, READ, WRITE, Role
from conveyor.store.base import Store


async def test_signup_makes_a_tenant_and_its_owner_logged_in(accounts: Accounts) -> None:
    session = await accounts.signup("  Owner@Example.COM ", PASSWORD, " Acme ")

    assert session.role is Role.OWNER
    assert session.user.email == "owner@example.com"
    assert session.user.password_hash is None  # never handed out
    assert session.expires_in == accounts.settings.access_token_seconds
    assert session.refresh_token.startswith("cvr_")
    assert session.tenant_id is not None
    tenant = await accounts.tenant(session.tenant_id)
    assert tenant.name == "Acme"
    principal = await accounts.authenticate(session.access_token)
    assert principal.tenant_id == session.tenant_id
    assert principal.user_id == session.user.id
    assert principal.role is Role.OWNER
    assert principal.scopes == {READ, WRITE, ADMIN}
    assert not principal.operator


async def test_a_second_signup_with_the_email_conflicts(accounts: Accounts, owner: Session) -> None:
    with pytest.raises(Conflict, match="email"):
        await accounts.signup("OWNER@example.com", PASSWORD, "Other")
    assert len(await accounts.store.list_tenants()) == 1


async def test_login_gives_a_session_of_the_users_tenant(
    accounts: Accounts, owner: Session
) -> None:
    session = await accounts.login("Owner@example.com", PASSWORD)

    assert (session.tenant_id, session.role) == (owner.tenant_id, Role.OWNER)
    assert session.user.password_hash is None
    me = await accounts.me(await accounts.authenticate(session.access_token))
    assert me.user is not None
    assert (me.user.id, me.user.password_hash) == (owner.user.id, None)
    assert [m.tenant_id for m in me.memberships] == [owner.tenant_id]
    assert session.refresh_token != owner.refresh_token
    principal = await accounts.authenticate(session.access_token)
    assert principal.user_id == owner.user.id


async def test_login_to_one_of_several_tenants_must_name_it(
    accounts: Accounts, owner: Session
) -> None:
    other = await accounts.create_tenant("Other")
    await accounts.add_member(other.id, "owner@example.com", Role.VIEWER)

    with pytest.raises(ChooseTenant) as chosen:
        await accounts.login("owner@example.com", PASSWORD)
    assert set(chosen.value.tenant_ids) == {owner.tenant_id, other.id}

    session = await accounts.login("owner@example.com", PASSWORD, tenant_id=other.id)
    assert (session.tenant_id, session.role) == (other.id, Role.VIEWER)
    with pytest.raises(Forbidden, match="not a member"):
        await accounts.login("owner@example.com", PASSWORD, tenant_id="tnt_elsewhere")


async def test_a_user_of_no_tenant_cannot_log_in_to_one(accounts: Accounts) -> None:
    await accounts.create_user("lonely@example.com", PASSWORD)

    with pytest.raises(Forbidden, match="no tenant"):
        await accounts.login("lonely@example.com", PASSWORD)


async def test_an_operator_logs_in_without_a_tenant(accounts: Accounts) -> None:
    await accounts.create_operator("op@example.com", PASSWORD)

    session = await accounts.login("op@example.com", PASSWORD)
    principal = await accounts.authenticate(session.access_token)

    assert (session.tenant_id, session.role) == (None, None)
    assert principal.operator
    assert principal.tenant_id is None
    assert principal.scopes == {READ}
    refreshed = await accounts.refresh(session.refresh_token)
    assert (await accounts.authenticate(refreshed.access_token)).operator


async def test_refresh_rotates_the_refresh_token(accounts: Accounts, owner: Session) -> None:
    first = await accounts.refresh(owner.refresh_token)
    second = await accounts.refresh(first.refresh_token)

    assert len({owner.refresh_token, first.refresh_token, second.refresh_token}) == 3
    assert (second.tenant_id, second.role) == (owner.tenant_id, Role.OWNER)
    assert (await accounts.authenticate(second.access_token)).user_id == owner.user.id


async def test_a_rotated_refresh_token_used_again_revokes_its_family(
    accounts: Accounts, owner: Session
) -> None:
    stolen = owner.refresh_token
    rightful = await accounts.refresh(owner.refresh_token)

    with pytest.raises(Unauthenticated):
        await accounts.refresh(stolen)
    # The whole family is revoked: the newest token of it too.
    with pytest.raises(Unauthenticated):
        await accounts.refresh(rightful.refresh_token)
    # Another session of the same user is another family, untouched.
    other = await accounts.login("owner@example.com", PASSWORD)
    assert (await accounts.refresh(other.refresh_token)).user.id == owner.user.id


async def test_two_processes_rotating_one_token_at_once_give_one_session(
    accounts: Accounts, peer_accounts: Accounts, owner: Session
) -> None:
    outcomes = await asyncio.gather(
        accounts.refresh(owner.refresh_token),
        peer_accounts.refresh(owner.refresh_token),
        return_exceptions=True,
    )

    sessions = [o for o in outcomes if isinstance(o, Session)]
    assert len(sessions) <= 1
    assert any(isinstance(o, Unauthenticated) for o in outcomes)
    for session in sessions:
        # The one that rotated was in the family the reuse revoked.
        with pytest.raises(Unauthenticated):
            await accounts.refresh(session.refresh_token)


async def test_logout_revokes_the_session(accounts: Accounts, owner: Session) -> None:
    rotated = await accounts.refresh(owner.refresh_token)

    await accounts.logout(rotated.refresh_token)

    with pytest.raises(Unauthenticated):
        await accounts.refresh(rotated.refresh_token)
    await accounts.logout(rotated.refresh_token)  # again: no error
    await accounts.logout("cvr_never-issued")


async def test_an_expired_refresh_token_is_refused(store: Store) -> None:
    accounts = await started(store, account_settings(refresh_token_seconds=0.3))
    session = await accounts.signup("owner@example.com", PASSWORD, "Acme")
    await asyncio.sleep(0.5)

    with pytest.raises(Unauthenticated):
        await accounts.refresh(session.refresh_token)


async def test_refresh_tokens_are_stored_hashed(
    accounts: Accounts, owner: Session, raw_rows: RawRows
) -> None:
    rotated = await accounts.refresh(owner.refresh_token)
    rows = await raw_rows("conveyor_refresh_tokens")

    assert rows.count("rft_") == 2
    for secret in (owner.refresh_token, rotated.refresh_token):
        assert secret not in rows
        assert secret.removeprefix("cvr_") not in rows


async def test_a_disabled_user_cannot_log_in_or_refresh(accounts: Accounts, owner: Session) -> None:
    await accounts.set_user_disabled("owner@example.com", True)

    with pytest.raises(Unauthenticated) as login:
        await accounts.login("owner@example.com", PASSWORD)
    with pytest.raises(Unauthenticated):
        await accounts.refresh(owner.refresh_token)
    assert str(login.value) == Unauthenticated.MESSAGE

    await accounts.set_user_disabled(owner.user.id, False)
    assert (await accounts.login("owner@example.com", PASSWORD)).user.id == owner.user.id


async def test_a_disabled_tenant_refuses_login_refresh_and_tokens(
    accounts: Accounts, owner: Session
) -> None:
    assert owner.tenant_id is not None
    await accounts.set_tenant_disabled(owner.tenant_id, True)

    with pytest.raises(Forbidden, match="disabled"):
        await accounts.login("owner@example.com", PASSWORD)
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(owner.access_token)
    with pytest.raises(Unauthenticated):
        await accounts.refresh(owner.refresh_token)

    await accounts.set_tenant_disabled(owner.tenant_id, False)
    assert (await accounts.authenticate(owner.access_token)).tenant_id == owner.tenant_id


async def test_a_removed_member_cannot_refresh_into_the_tenant(
    accounts: Accounts, owner: Session
) -> None:
    assert owner.tenant_id is not None
    await accounts.create_user("m@example.com", PASSWORD)
    await accounts.add_member(owner.tenant_id, "m@example.com", Role.MEMBER)
    member = await accounts.login("m@example.com", PASSWORD)
    principal = await accounts.authenticate(owner.access_token)

    assert member.user.id is not None
    await accounts.remove_member(principal, member.user.id)

    with pytest.raises(Unauthenticated):
        await accounts.refresh(member.refresh_token)


async def test_a_password_change_logs_the_user_out(accounts: Accounts, owner: Session) -> None:
    await accounts.set_password("owner@example.com", "another long password")

    with pytest.raises(Unauthenticated):
        await accounts.refresh(owner.refresh_token)
    with pytest.raises(Unauthenticated):
        await accounts.login("owner@example.com", PASSWORD)
    await accounts.login("owner@example.com", "another long password")


# -- passwords -------------------------------------------------------------------------
async def test_the_password_is_stored_as_an_argon2id_hash(
    accounts: Accounts, owner: Session, raw_rows: RawRows
) -> None:
    rows = await raw_rows("conveyor_users")

    assert PASSWORD not in rows
    assert "$argon2id$v=19$m=64,t=1,p=1$" in rows


async def test_login_rehashes_a_password_when_the_parameters_changed(
    accounts: Accounts, owner: Session, store: Store
) -> None:
    before = await store.get_user(owner.user.id)
    assert before is not None
    assert before.password_hash is not None
    stronger = await started(store, account_settings(password_time_cost=2, password_memory_kib=128))

    await stronger.login("owner@example.com", PASSWORD)

    after = await store.get_user(owner.user.id)
    assert after is not None
    assert after.password_hash is not None
    assert after.password_hash != before.password_hash
    assert "$m=128,t=2,p=1$" in after.password_hash
    assert not stronger.passwords.needs_rehash(after.password_hash)
    # Same parameters: no new hash at every login.
    await stronger.login("owner@example.com", PASSWORD)
    assert await store.get_user(owner.user.id) == after
    # The new hash verifies the same password for a service with the old parameters,
    # which hashes it back to those.
    await accounts.login("owner@example.com", PASSWORD)
    back = await store.get_user(owner.user.id)
    assert back is not None
    assert "$m=64,t=1,p=1$" in (back.password_hash or "")


async def test_a_wrong_password_does_not_rehash(
    store: Store, accounts: Accounts, owner: Session
) -> None:
    before = await store.get_user(owner.user.id)
    stronger = await started(store, account_settings(password_time_cost=2))

    with pytest.raises(Unauthenticated):
        await stronger.login("owner@example.com", "not the password")

    assert await store.get_user(owner.user.id) == before


# -- no user enumeration ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("nobody@example.com", PASSWORD),
        ("owner@example.com", "wrong password!"),
        ("not an email", PASSWORD),
        ("owner@example.com", ""),
    ],
)
async def test_every_failed_login_says_the_same(
    accounts: Accounts, owner: Session, email: str, password: str
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        await accounts.login(email, password)

    assert str(refused.value) == Unauthenticated.MESSAGE == "invalid or expired credentials"
    assert type(refused.value) is Unauthenticated


async def test_an_unknown_email_verifies_a_hash_as_a_known_one_does(
    accounts: Accounts, owner: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths run one argon2 verification of the same cost (the real verification,
    wrapped to record the hash it checks)."""
    verified: list[str] = []
    real_verify = accounts.passwords._verify

    def recording_verify(password_hash: str, password: bytes) -> bool:
        verified.append(password_hash)
        return real_verify(password_hash, password)

    with pytest.raises(Unauthenticated):
        # The first unknown email makes the dummy hash (as costly as verifying one).
        await accounts.login("first-unknown@example.com", PASSWORD)
    monkeypatch.setattr(accounts.passwords, "_verify", recording_verify)

    with pytest.raises(Unauthenticated):
        await accounts.login("nobody@example.com", PASSWORD)
    with pytest.raises(Unauthenticated):
        await accounts.login("owner@example.com", "wrong password!")

    assert len(verified) == 2
    unknown, known = verified
    assert unknown.startswith("$argon2id$")
    assert known.startswith("$argon2id$")
    # The dummy hash has the current parameters: the same cost as a real user's.
    assert unknown.split("$")[3] == known.split("$")[3]


async def test_an_unknown_email_takes_as_long_as_a_wrong_password(store: Store) -> None:
    # Costly enough hashing that a verification dwarfs the queries around it.
    accounts = await started(
        store, account_settings(password_time_cost=3, password_memory_kib=8192)
    )
    await accounts.signup("owner@example.com", PASSWORD, "Acme")

    async def timed(email: str) -> float:
        start = time.perf_counter()
        with pytest.raises(Unauthenticated):
            await accounts.login(email, "wrong password!")
        return time.perf_counter() - start

    await timed("nobody@example.com")  # makes the dummy hash
    known = min([await timed("owner@example.com") for _ in range(5)])
    unknown = min([await timed("nobody@example.com") for _ in range(5)])

    assert 0.5 < unknown / known < 2.0, (unknown, known)


async def test_the_first_unknown_email_takes_no_longer_than_the_next() -> None:
    """The first verification without a hash makes the dummy hash instead: as costly as
    verifying one. Each first is a fresh instance's, the least of several (one timing on
    a shared machine is noise)."""
    settings = account_settings(password_time_cost=3, password_memory_kib=8192)
    real = await passwords_module.Passwords(settings).hash(PASSWORD)

    async def timed(passwords: passwords_module.Passwords, password_hash: str | None) -> float:
        start = time.perf_counter()
        assert not await passwords.verify(password_hash, "wrong password!")
        return time.perf_counter() - start

    firsts = [await timed(passwords_module.Passwords(settings), None) for _ in range(5)]
    reused = passwords_module.Passwords(settings)
    known = min([await timed(reused, real) for _ in range(5)])

    # Twice the cost (a hash, then a verification) would be about 2.
    assert 0.5 < min(firsts) / known < 1.5, (firsts, known)


def test_passwords_refuse_argon2_parameters_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="CONVEYOR_PASSWORD_MEMORY_KIB"):
        passwords_module.Passwords(account_settings(password_memory_kib=8, password_parallelism=4))
