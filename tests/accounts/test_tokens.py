"""Access tokens: every forgery and every stale or foreign token is refused with the one
Unauthenticated; signing keys rotate without logging anyone out."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from accounts_support import PASSWORD, account_settings, started
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from conveyor.accounts import Accounts, Session, Unauthenticated
from conveyor.accounts.tokens import KEYS_MAX_AGE_S, new_signing_key
from conveyor.store.base import Store


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


async def _active_key(accounts: Accounts) -> tuple[str, Ed25519PrivateKey, str]:
    """The kid, private key and public PEM of the key that signs now."""
    key = next(k for k in await accounts.store.signing_keys() if k.retired_at is None)
    private = serialization.load_pem_private_key(key.private_pem.encode(), None)
    assert isinstance(private, Ed25519PrivateKey)
    return key.kid, private, key.public_pem


def _claims_of(accounts: Accounts, session: Session, **changes: Any) -> dict[str, Any]:
    """The claims the server would sign for ``session``, with ``changes`` (None
    removes a claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": accounts.settings.jwt_issuer,
        "aud": accounts.settings.jwt_audience,
        "sub": session.user.id,
        "tid": session.tenant_id,
        "role": session.role.value if session.role else None,
        "op": False,
        "iat": now,
        "exp": now + 600,
        "jti": "jti-1",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


async def _refused(accounts: Accounts, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        await accounts.authenticate(token)
    assert str(refused.value) == Unauthenticated.MESSAGE
    return refused.value


async def test_a_token_signed_as_the_server_would_is_accepted(
    accounts: Accounts, owner: Session
) -> None:
    """The control of the forgeries below: the same construction, valid, passes."""
    kid, private, _ = await _active_key(accounts)
    token = jwt.encode(
        _claims_of(accounts, owner), private, algorithm="EdDSA", headers={"kid": kid}
    )

    principal = await accounts.authenticate(token)

    assert principal.user_id == owner.user.id
    assert jwt.get_unverified_header(owner.access_token)["kid"] == kid
    assert jwt.get_unverified_header(owner.access_token)["alg"] == "EdDSA"


async def test_a_tampered_token_is_refused(accounts: Accounts, owner: Session) -> None:
    head, body, signature = owner.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["role"] = "owner"
    claims["tid"] = "tnt_someone_else"
    forged_body = _b64(json.dumps(claims).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    # The genuine token verified first: what the process remembers of it covers only
    # that exact text.
    assert (await accounts.authenticate(owner.access_token)).user_id == owner.user.id

    await _refused(accounts, f"{head}.{forged_body}.{signature}")
    await _refused(accounts, f"{head}.{body}.{flipped}")
    await _refused(accounts, f"{head}.{body}.")
    await _refused(accounts, f"{head}.{body}")


async def test_an_expired_token_is_refused(accounts: Accounts, owner: Session) -> None:
    kid, private, _ = await _active_key(accounts)
    past = int(time.time()) - 3600
    claims = _claims_of(accounts, owner, iat=past - 600, exp=past)

    refused = await _refused(
        accounts, jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})
    )
    assert "expired" in refused.reason.lower()


async def test_a_token_expires_after_its_lifetime(store: Store) -> None:
    accounts = await started(store, account_settings(access_token_seconds=1, jwt_leeway_seconds=0))
    session = await accounts.signup("owner@example.com", PASSWORD, "Acme")
    assert (await accounts.authenticate(session.access_token)).user_id == session.user.id

    await asyncio.sleep(2.1)

    await _refused(accounts, session.access_token)


async def test_a_token_of_an_unknown_kid_is_refused(accounts: Accounts, owner: Session) -> None:
    stranger = Ed25519PrivateKey.generate()
    claims = _claims_of(accounts, owner)
    kid, _, _ = await _active_key(accounts)

    await _refused(
        accounts, jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "k_other"})
    )
    # A foreign key claiming the server's kid fails the signature check.
    await _refused(accounts, jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": kid}))
    # No kid, or a kid that is not text.
    await _refused(accounts, jwt.encode(claims, stranger, algorithm="EdDSA"))
    await _refused(accounts, _raw_token({"alg": "EdDSA", "kid": 7}, claims, b"\x00" * 64))


async def test_alg_none_is_refused(accounts: Accounts, owner: Session) -> None:
    kid, _, _ = await _active_key(accounts)
    claims = _claims_of(accounts, owner)

    for alg in ("none", "None", "NONE", ""):
        await _refused(accounts, _raw_token({"alg": alg, "kid": kid}, claims, b""))
    await _refused(accounts, jwt.encode(claims, None, algorithm="none", headers={"kid": kid}))


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(
    accounts: Accounts, owner: Session
) -> None:
    """The algorithm-confusion attack: the public key (which is public) used as an HMAC
    secret, in the hope that the server verifies with whatever the header says."""
    kid, _, public_pem = await _active_key(accounts)
    claims = _claims_of(accounts, owner)
    raw_public = serialization.load_pem_public_key(public_pem.encode()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    for alg, digestmod in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        for secret in (public_pem.encode(), raw_public):
            header = {"alg": alg, "kid": kid, "typ": "JWT"}
            head = _b64(json.dumps(header).encode())
            body = _b64(json.dumps(claims).encode())
            mac = hmac.new(secret, f"{head}.{body}".encode(), digestmod).digest()
            await _refused(accounts, f"{head}.{body}.{_b64(mac)}")


async def test_an_rs256_token_is_refused(accounts: Accounts, owner: Session) -> None:
    kid, _, _ = await _active_key(accounts)
    rsa = generate_private_key(public_exponent=65537, key_size=2048)

    await _refused(
        accounts,
        jwt.encode(_claims_of(accounts, owner), rsa, algorithm="RS256", headers={"kid": kid}),
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "someone-else"},
        {"aud": "another-api"},
        {"aud": ["another-api"]},
        {"iss": None},
        {"aud": None},
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"tid": None},
        {"role": None},
        {"op": None},
        {"jti": None},
        {"sub": "key_not_a_user"},
        {"sub": 12},
        {"role": "superuser"},
        {"op": "yes"},
        {"tid": 5},
        {"exp": "tomorrow"},
    ],
    ids=repr,
)
async def test_a_token_with_a_wrong_or_missing_claim_is_refused(
    accounts: Accounts, owner: Session, changes: dict[str, Any]
) -> None:
    kid, private, _ = await _active_key(accounts)
    claims = _claims_of(accounts, owner, **changes)

    await _refused(accounts, jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid}))


async def test_a_tenantless_token_of_a_non_operator_is_refused(
    accounts: Accounts, owner: Session
) -> None:
    kid, private, _ = await _active_key(accounts)
    claims = _claims_of(accounts, owner)
    claims.update(tid=None, role=None, op=False)

    await _refused(accounts, jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid}))


@pytest.mark.parametrize(
    "text",
    ["", ".", "..", "a.b.c", "x" * 5000, "\ud800.\udfff.x", "a\x00.b.c", "ü.ü.ü", "Bearer x"],
    ids=repr,
)
async def test_garbage_is_refused_as_a_bad_token(accounts: Accounts, text: str) -> None:
    await _refused(accounts, text)


async def test_a_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(
    accounts: Accounts, owner: Session
) -> None:
    old_kid = jwt.get_unverified_header(owner.access_token)["kid"]

    key = await accounts.rotate_signing_key()
    session = await accounts.login("owner@example.com", PASSWORD)

    assert key.kid != old_kid
    assert jwt.get_unverified_header(session.access_token)["kid"] == key.kid
    assert (await accounts.authenticate(owner.access_token)).user_id == owner.user.id
    assert (await accounts.authenticate(session.access_token)).user_id == owner.user.id
    retired = [k for k in await accounts.store.signing_keys() if k.kid == old_kid]
    assert retired[0].retired_at is not None


async def test_a_retired_key_stops_verifying_once_its_tokens_have_expired(
    store: Store,
) -> None:
    accounts = await started(store, account_settings(access_token_seconds=1, jwt_leeway_seconds=0))
    session = await accounts.signup("owner@example.com", PASSWORD, "Acme")
    kid, private, _ = await _active_key(accounts)
    await accounts.rotate_signing_key()
    # A token of the old key that would still be in date: its key is past its horizon.
    long_lived = _claims_of(accounts, session)

    await asyncio.sleep(1.5)

    await _refused(accounts, session.access_token)
    await _refused(
        accounts, jwt.encode(long_lived, private, algorithm="EdDSA", headers={"kid": kid})
    )


async def test_another_process_sees_a_rotation(
    accounts: Accounts, peer_accounts: Accounts, owner: Session
) -> None:
    """The peer learns a new kid at once (a token naming it), and signs with it once its
    copy of the keys is older than KEYS_MAX_AGE_S (shortened here)."""
    key = await accounts.rotate_signing_key()
    fresh = await accounts.login("owner@example.com", PASSWORD)

    assert (await peer_accounts.authenticate(fresh.access_token)).user_id == owner.user.id

    assert KEYS_MAX_AGE_S <= 300
    peer_accounts.tokens.keys_max_age_s = 0.0
    peer_session = await peer_accounts.login("owner@example.com", PASSWORD)
    assert jwt.get_unverified_header(peer_session.access_token)["kid"] == key.kid


async def test_processes_starting_at_once_share_one_signing_key(
    store: Store, peer_store: Store
) -> None:
    first, second = await asyncio.gather(
        started(store, account_settings()), started(peer_store, account_settings())
    )

    assert first.tokens.kid is not None
    assert first.tokens.kid == second.tokens.kid


def test_a_new_signing_key_is_an_ed25519_key_with_a_random_kid() -> None:
    one, two = new_signing_key(), new_signing_key()

    assert one.kid != two.kid
    assert one.algorithm == "EdDSA"
    assert one.retired_at is None
    assert "PRIVATE KEY" in one.private_pem
