"""Access tokens: JWTs signed with Ed25519 (``EdDSA``), each naming its key by ``kid``.

The server fixes the algorithm: verification accepts ``EdDSA`` only, whatever the token's
header says, so ``alg: none`` and an HS256 token "signed" with the public key are refused.
The key is looked up by the header's ``kid`` among the stored keys (active and retired;
an unknown kid reloads them once, for a key another process added); a kid that names no
key is refused. ``iss``, ``aud``, ``sub``, ``tid``, ``role``, ``op``, ``iat``, ``exp``
and ``jti`` are all required.

Rotation: a new key signs from then on; a retired key still verifies what it signed
until those tokens have expired (``access_token_seconds`` after its retirement), so a
rotation logs nobody out. Every process reads the stored keys again when its copy is
older than :data:`KEYS_MAX_AGE_S`, so a rotation made elsewhere (``conveyor keys
rotate``) signs everywhere within that time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conveyor.accounts.errors import Unauthenticated
from conveyor.config import Settings
from conveyor.store.accounts import Role, SigningKey

ALGORITHM = "EdDSA"
REQUIRED = ("iss", "aud", "sub", "tid", "role", "op", "iat", "exp", "jti")
MAX_TOKEN_LENGTH = 4096
RELOAD_INTERVAL_S = 5.0
"""An unknown kid reloads the keys at most this often: garbage kids cannot make every
call a query."""
VERIFIED_CACHE_SIZE = 10_000
"""Tokens this process has verified, kept (until they expire) so that a client's next
call with the same token skips the signature check (about 0.1 ms of CPU a call); cleared
when full."""
KEYS_MAX_AGE_S = 60.0
"""The keys are read again when the loaded copy is older than this: how long another
process's rotation takes to be seen here."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified access token says."""

    user_id: str
    tenant_id: str | None
    role: Role | None
    operator: bool
    expires_at: float


STREAM_AUDIENCE_SUFFIX = ":stream"


@dataclass(frozen=True, slots=True)
class StreamClaims:
    """What a verified stream token says: who asked for it."""

    caller_id: str
    tenant_id: str | None
    scopes: frozenset[str]
    operator: bool


def new_signing_key() -> SigningKey:
    """A fresh Ed25519 key with a random kid, not stored yet."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return SigningKey(
        kid=f"k_{secrets.token_urlsafe(12)}",
        algorithm=ALGORITHM,
        private_pem=private_pem,
        public_pem=public_pem,
        created_at=time.time(),
        retired_at=None,
    )


class AccessTokens:
    """Signs and verifies access tokens with the keys it was given (:meth:`load`).

    ``reload`` fetches the stored keys again; it is called when a token names a kid this
    process does not know (another process rotated)."""

    def __init__(
        self, settings: Settings, reload: Callable[[], Awaitable[list[SigningKey]]]
    ) -> None:
        self.settings = settings
        self._reload = reload
        self._signing: tuple[str, Ed25519PrivateKey] | None = None
        self._verifying: dict[str, tuple[Ed25519PublicKey, float | None]] = {}
        self._reloaded_at = float("-inf")
        self._verified: dict[str, Claims] = {}
        self._loaded_at = float("-inf")
        self.keys_max_age_s = KEYS_MAX_AGE_S

    async def fresh(self) -> None:
        """Read the stored keys again if the loaded copy is older than
        ``keys_max_age_s``: a key another process rotated in signs here too, and the one
        it retired is known as retired."""
        loaded_at = self._loaded_at
        if time.monotonic() - loaded_at < self.keys_max_age_s:
            return
        # Marked fresh before the query, so that the calls arriving meanwhile use the
        # copy they have instead of each reading the keys again.
        self._loaded_at = time.monotonic()
        try:
            self.load(await self._reload())
        except BaseException:
            self._loaded_at = loaded_at
            raise

    def load(self, keys: Sequence[SigningKey]) -> None:
        """Use ``keys``: the active one signs, every EdDSA one verifies."""
        signing = None
        verifying: dict[str, tuple[Ed25519PublicKey, float | None]] = {}
        for key in keys:
            if key.algorithm != ALGORITHM:
                continue
            public = serialization.load_pem_public_key(key.public_pem.encode())
            if not isinstance(public, Ed25519PublicKey):
                continue
            verifying[key.kid] = (public, key.retired_at)
            if key.retired_at is None and signing is None:
                private = serialization.load_pem_private_key(key.private_pem.encode(), None)
                if isinstance(private, Ed25519PrivateKey):
                    signing = (key.kid, private)
        if {k: r for k, (_, r) in verifying.items()} != {
            k: r for k, (_, r) in self._verifying.items()
        }:
            # A key gone or retired: what it verified is checked again.
            self._verified.clear()
        self._signing = signing
        self._verifying = verifying
        self._loaded_at = time.monotonic()

    @property
    def kid(self) -> str | None:
        """The kid of the key that signs; None before :meth:`load` found one."""
        return self._signing[0] if self._signing else None

    def issue(
        self, user_id: str, tenant_id: str | None, role: Role | None, operator: bool
    ) -> tuple[str, int]:
        """An access token and its lifetime in seconds."""
        if self._signing is None:
            raise RuntimeError("no active signing key: call Accounts.start() first")
        kid, private = self._signing
        now = int(time.time())
        lifetime = self.settings.access_token_seconds
        claims: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": user_id,
            "tid": tenant_id,
            "role": role.value if role else None,
            "op": operator,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(12),
        }
        token = jwt.encode(claims, private, algorithm=ALGORITHM, headers={"kid": kid})
        return token, lifetime

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token; :class:`Unauthenticated` (reason logged by the
        caller) for anything else."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("token too long")
        known = self._verified.get(token)
        if known is not None:
            # The same text verified before: only its expiry can have changed since (a
            # retired key verifies until every token it signed has expired).
            if time.time() < known.expires_at + self.settings.jwt_leeway_seconds:
                return known
            del self._verified[token]
            raise Unauthenticated("token expired")
        claims = await self._decode(
            token, self.settings.jwt_audience, ["iss", "aud", "sub", "iat", "exp", "jti"]
        )
        verified = _claims(claims)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = verified
        return verified

    async def _decode(self, token: str, audience: str, required: list[str]) -> dict[str, Any]:
        """The claims of a token signed by one of the keys, for ``audience``."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("token too long")
        if not token.isascii():
            # A JWT is base64url and dots; PyJWT would fail to encode a lone surrogate.
            raise Unauthenticated("token is not ASCII")
        await self.fresh()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(f"algorithm {header.get('alg')!r} refused")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthenticated("token without kid")
        public = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token refused: {exc}") from None
        return claims

    def issue_stream(
        self, caller_id: str, tenant_id: str | None, scopes: frozenset[str], operator: bool
    ) -> tuple[str, int]:
        """A stream token and its lifetime (``stream_token_seconds``): it opens event
        streams only (its audience is the access tokens' with ``:stream``), for browsers,
        which cannot send a header with ``EventSource`` or ``WebSocket``."""
        if self._signing is None:
            raise RuntimeError("no active signing key: call Accounts.start() first")
        kid, private = self._signing
        now = int(time.time())
        lifetime = self.settings.stream_token_seconds
        claims: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience + STREAM_AUDIENCE_SUFFIX,
            "sub": caller_id,
            "tid": tenant_id,
            "scp": sorted(scopes),
            "op": operator,
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, private, algorithm=ALGORITHM, headers={"kid": kid}), lifetime

    async def verify_stream(self, token: str) -> StreamClaims:
        """The claims of a valid stream token; :class:`Unauthenticated` for anything else
        (an access token included: the audiences differ)."""
        claims = await self._decode(
            token,
            self.settings.jwt_audience + STREAM_AUDIENCE_SUFFIX,
            ["iss", "aud", "sub", "tid", "scp", "op", "iat", "exp", "jti"],
        )
        sub, tid, scp, op = claims["sub"], claims["tid"], claims["scp"], claims["op"]
        if not (isinstance(sub, str) and sub.startswith(("user:", "key:"))):
            raise Unauthenticated("bad sub claim")
        if not (tid is None or isinstance(tid, str)) or not isinstance(op, bool):
            raise Unauthenticated("bad tid or op claim")
        if not (isinstance(scp, list) and all(isinstance(x, str) for x in scp)):
            raise Unauthenticated("bad scp claim")
        return StreamClaims(sub, tid, frozenset(scp), op)

    async def _key(self, kid: str) -> Ed25519PublicKey:
        entry = self._verifying.get(kid)
        if entry is None and time.monotonic() - self._reloaded_at >= RELOAD_INTERVAL_S:
            self._reloaded_at = time.monotonic()
            self.load(await self._reload())
            entry = self._verifying.get(kid)
        if entry is None:
            raise Unauthenticated(f"unknown kid {kid[:64]!r}")
        public, retired_at = entry
        horizon = self.settings.access_token_seconds + self.settings.jwt_leeway_seconds
        if retired_at is not None and time.time() > retired_at + horizon:
            raise Unauthenticated(f"kid {kid!r} retired")
        return public


def _claims(claims: dict[str, Any]) -> Claims:
    missing = [name for name in REQUIRED if name not in claims]
    if missing:
        raise Unauthenticated(f"claims missing: {', '.join(missing)}")
    sub, tid, role, op = claims["sub"], claims["tid"], claims["role"], claims["op"]
    if not (isinstance(sub, str) and sub.startswith("usr_")):
        raise Unauthenticated("bad sub claim")
    if not (tid is None or isinstance(tid, str)) or not isinstance(op, bool):
        raise Unauthenticated("bad tid or op claim")
    if role is not None and role not in Role.__members__.values():
        raise Unauthenticated("bad role claim")
    if (tid is None) != (role is None) or (tid is None and not op):
        raise Unauthenticated("tid and role disagree")
    return Claims(
        user_id=sub,
        tenant_id=tid,
        role=Role(role) if role is not None else None,
        operator=op,
        expires_at=float(claims["exp"]),
    )
