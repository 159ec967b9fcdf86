"""Authentication: the :class:`Principal` of a bearer credential (an access token or
an API key), and who a principal is (:meth:`Authentication.me`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from conveyor.accounts import api_keys
from conveyor.accounts.base import AccountsBase, log, without_hash
from conveyor.accounts.errors import Unauthenticated
from conveyor.accounts.principal import Principal
from conveyor.store.accounts import READ, ApiKey, Member, User

TOUCH_INTERVAL_S = 60.0
"""An API key's ``last_used_at`` is written at most this often per key and process."""
OPERATOR_SCOPES = frozenset({READ})
"""A tenantless operator reads every tenant's data and writes into none."""


@dataclass(frozen=True, slots=True)
class Me:
    """Who a principal is: the user (None for an API key), the user's memberships, and
    the key for an API key's principal."""

    principal: Principal
    user: User | None
    """Without its password hash."""
    memberships: list[Member]
    api_key: ApiKey | None


class Authentication(AccountsBase):
    """Bearer credentials to principals."""

    async def authenticate(self, bearer: str) -> Principal:
        """The principal of an access token or an API key (``Authorization: Bearer``).
        Revocation and expiry of a key are read at every call. Raises
        :class:`Unauthenticated` with one message whatever the reason (logged)."""
        try:
            if api_keys.looks_like_key(bearer):
                return await self._key_principal(bearer)
            return await self._token_principal(bearer)
        except Unauthenticated as exc:
            log.info("authentication refused", reason=exc.reason)
            raise

    def stream_token(self, principal: Principal) -> tuple[str, int]:
        """A short-lived token that opens event streams as ``principal`` (see
        :meth:`~conveyor.accounts.tokens.AccessTokens.issue_stream`), and its lifetime."""
        return self.tokens.issue_stream(
            principal.caller_id, principal.tenant_id, principal.scopes, principal.operator
        )

    async def authenticate_stream(self, token: str) -> Principal:
        """The principal a stream token was issued to; its tenant must still be enabled.
        Raises :class:`Unauthenticated` as :meth:`authenticate` does."""
        try:
            claims = await self.tokens.verify_stream(token)
            rate_limit = None
            if claims.tenant_id is not None:
                rate_limit = (await self._enabled_tenant(claims.tenant_id)).rate_limit
        except Unauthenticated as exc:
            log.info("stream token refused", reason=exc.reason)
            raise
        return Principal(
            tenant_id=claims.tenant_id,
            caller_id=claims.caller_id,
            role=None,
            scopes=claims.scopes,
            operator=claims.operator,
            rate_limit=rate_limit,
        )

    async def me(self, principal: Principal) -> Me:
        """The user or key behind ``principal``."""
        user = None
        memberships: list[Member] = []
        key = None
        if principal.user_id is not None:
            user = await self.store.get_user(principal.user_id)
            memberships = await self.store.memberships(principal.user_id)
        elif principal.api_key_id is not None and principal.tenant_id is not None:
            key = next(
                (
                    k
                    for k in await self.store.list_api_keys(principal.tenant_id)
                    if k.id == principal.api_key_id
                ),
                None,
            )
        return Me(principal, without_hash(user) if user else None, memberships, key)

    async def _token_principal(self, bearer: str) -> Principal:
        claims = await self.tokens.verify(bearer)
        if claims.tenant_id is None:
            return Principal(
                tenant_id=None,
                caller_id=f"user:{claims.user_id}",
                role=None,
                scopes=OPERATOR_SCOPES,
                operator=True,
            )
        tenant = await self._enabled_tenant(claims.tenant_id)
        assert claims.role is not None
        return Principal(
            tenant_id=tenant.id,
            caller_id=f"user:{claims.user_id}",
            role=claims.role,
            scopes=claims.role.scopes,
            operator=claims.operator,
            rate_limit=tenant.rate_limit,
        )

    async def _key_principal(self, bearer: str) -> Principal:
        text = api_keys.parse_key(bearer)
        if text is None:
            raise Unauthenticated("malformed API key")
        key = await self.store.find_api_key(text.prefix)
        # The digest is compared even for an unknown prefix, so both cost the same.
        matches = api_keys.secret_matches(text.secret, key.secret_hash if key else "0" * 64)
        if key is None or not matches:
            raise Unauthenticated("unknown API key or wrong secret")
        if key.revoked_at is not None:
            raise Unauthenticated(f"API key {key.id} revoked")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise Unauthenticated(f"API key {key.id} expired")
        tenant = await self._enabled_tenant(key.tenant_id)
        await self._touch(key)
        return Principal(
            tenant_id=tenant.id,
            caller_id=f"key:{key.id}",
            role=None,
            scopes=frozenset(key.scopes),
            rate_limit=tenant.rate_limit,
        )

    async def _touch(self, key: ApiKey) -> None:
        now = time.time()
        last = max(key.last_used_at or 0.0, self._touched.get(key.id, 0.0))
        if now - last < TOUCH_INTERVAL_S:
            return
        self._touched[key.id] = now
        await self.store.touch_api_key(key.id)
