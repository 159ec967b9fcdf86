"""Accounts on PostgreSQL (:class:`~conveyor.store.accounts.AccountStore`): each verb
one transaction. What a verb checks before it writes is read with ``FOR UPDATE`` (the
tenant's owners, the token to rotate, the invitation to accept), so two such verbs at
once take turns and the second sees what the first did; the one active signing key is
kept by a unique index. Each look-up is one plain statement of ``accounts.sql``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson

from conveyor.store.accounts import (
    TENANT_ID_PATTERN,
    ApiKey,
    Invitation,
    Member,
    NewApiKey,
    NewRefreshToken,
    RefreshToken,
    Role,
    RotateOutcome,
    Rotation,
    SigningKey,
    Tenant,
    User,
    last_owner_refusal,
)
from conveyor.store.base import ConflictError, DataRejected, StoreError
from conveyor.store.columns import Column, Table, column_list, tuple_from_json
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.rows import time_or_none
from conveyor.store.sqlfile import load_parts, load_statements

R = TypeVar("R")

_SQL = load_statements(__package__, "$", "accounts.sql")
_PARTS = load_parts(__package__, "accounts.sql")


def _time(value: datetime) -> float:
    return value.timestamp()


TENANTS: Table[Tenant] = Table(
    Tenant,
    (
        Column("id"),
        Column("name"),
        Column("created_at", _time),
        Column("disabled"),
        Column("rate_limit"),
    ),
)
USERS: Table[User] = Table(
    User,
    (
        Column("id"),
        Column("email"),
        Column("password_hash"),
        Column("operator"),
        Column("disabled"),
        Column("created_at", _time),
    ),
)
MEMBERS: Table[Member] = Table(
    Member,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("email"),
        Column("role", Role),
        Column("created_at", _time),
    ),
)
INVITATIONS: Table[Invitation] = Table(
    Invitation,
    (
        Column("id"),
        Column("tenant_id"),
        Column("email"),
        Column("role", Role),
        Column("token_hash"),
        Column("invited_by"),
        Column("created_at", _time),
        Column("expires_at", _time),
        Column("accepted_at", time_or_none),
        Column("revoked"),
    ),
)
REFRESH_TOKENS: Table[RefreshToken] = Table(
    RefreshToken,
    (
        Column("id"),
        Column("family_id"),
        Column("user_id"),
        Column("tenant_id"),
        Column("token_hash"),
        Column("created_at", _time),
        Column("expires_at", _time),
        Column("rotated_at", time_or_none),
        Column("revoked_at", time_or_none),
    ),
)
API_KEYS: Table[ApiKey] = Table(
    ApiKey,
    (
        Column("id"),
        Column("tenant_id"),
        Column("prefix"),
        Column("secret_hash"),
        Column("name"),
        Column("scopes", tuple_from_json),
        Column("created_by"),
        Column("created_at", _time),
        Column("last_used_at", time_or_none),
        Column("expires_at", time_or_none),
        Column("revoked_at", time_or_none),
    ),
)
SIGNING_KEYS: Table[SigningKey] = Table(
    SigningKey,
    (
        Column("kid"),
        Column("algorithm"),
        Column("private_pem"),
        Column("public_pem"),
        Column("created_at", _time),
        Column("retired_at", time_or_none),
    ),
)
_COLUMN_PARTS: dict[str, Table[Any]] = {
    "tenant_columns": TENANTS,
    "user_columns": USERS,
    "member_columns": MEMBERS,
    "invitation_columns": INVITATIONS,
    "refresh_token_columns": REFRESH_TOKENS,
    "api_key_columns": API_KEYS,
    "signing_key_columns": SIGNING_KEYS,
}
for _part, _table in _COLUMN_PARTS.items():
    _table.check(column_list(_PARTS[_part]), f"accounts.sql part {_part}")


async def _fetchrow(conn: Conn, name: str, values: Mapping[str, Any]) -> asyncpg.Record | None:
    stmt = _SQL[name]
    return await conn.fetchrow(stmt.sql, *stmt.args(values))


async def _changed(conn: Conn, name: str, values: Mapping[str, Any]) -> int:
    stmt = _SQL[name]
    status = await conn.execute(stmt.sql, *stmt.args(values))
    return int(status.rsplit(" ", 1)[-1])


async def _one(conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]) -> R | None:
    row = await _fetchrow(conn, name, values)
    return None if row is None else table.decode(row)


async def _inserted(conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]) -> R:
    """The row a statement that always returns one (``INSERT … RETURNING``) returned."""
    row = await _fetchrow(conn, name, values)
    if row is None:
        raise StoreError(f"statement {name!r} returned no row")
    return table.decode(row)


async def _all(conn: Conn, table: Table[R], name: str, values: Mapping[str, Any]) -> list[R]:
    stmt = _SQL[name]
    return [table.decode(row) for row in await conn.fetch(stmt.sql, *stmt.args(values))]


def _taken(exc: ConflictError, index: str) -> bool:
    """Whether ``exc`` broke the unique index or key ``index``."""
    cause = exc.__cause__
    return isinstance(cause, asyncpg.UniqueViolationError) and cause.constraint_name == index


def _tenant_refused(tenant_id: str, exc: DataRejected) -> DataRejected:
    if re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        return exc
    return DataRejected(f"tenant id {tenant_id!r} must match {TENANT_ID_PATTERN}: {exc}")


@dataclass(frozen=True, slots=True)
class _LastOwner:
    """What a transaction returns instead of leaving a tenant without an owner: raising
    inside it would cost the store its lane connection."""

    tenant_id: str
    user_id: str

    def refusal(self) -> ConflictError:
        return ConflictError(last_owner_refusal(self.tenant_id, self.user_id))


class PostgresAccounts:
    """The :class:`~conveyor.store.accounts.AccountStore` verbs of ``PostgresStore``."""

    _db: Database

    # -- tenants ---------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        values = {"tenant_id": tenant_id, "name": name}
        try:
            tenant = await self._db.run(
                lambda conn: _inserted(conn, TENANTS, "insert_tenant", values)
            )
        except DataRejected as exc:
            raise _tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise ConflictError(f"tenant {tenant_id!r} exists already") from exc
        return tenant

    async def signup(
        self, tenant_id: str, tenant_name: str, user_id: str, email: str, password_hash: str
    ) -> tuple[Tenant, User]:
        async def tx(conn: Conn) -> tuple[Tenant, User]:
            async with conn.transaction():
                tenant = await _inserted(
                    conn, TENANTS, "insert_tenant", {"tenant_id": tenant_id, "name": tenant_name}
                )
                user = await _insert_user(conn, user_id, email, password_hash, operator=False)
                await _changed(conn, "insert_member", _member(tenant_id, user_id, Role.OWNER))
                return tenant, user

        try:
            return await self._db.run(tx)
        except DataRejected as exc:
            raise _tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email, tenant_id) from exc

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._db.run(
            lambda conn: _one(conn, TENANTS, "get_tenant", {"tenant_id": tenant_id})
        )

    async def list_tenants(self) -> list[Tenant]:
        return await self._db.run(lambda conn: _all(conn, TENANTS, "list_tenants", {}))

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> bool:
        values = {"tenant_id": tenant_id, "disabled": disabled}
        return bool(await self._db.run(lambda conn: _changed(conn, "set_tenant_disabled", values)))

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> bool:
        values = {"tenant_id": tenant_id, "rate_limit": rate_limit}
        return bool(
            await self._db.run(lambda conn: _changed(conn, "set_tenant_rate_limit", values))
        )

    # -- users -----------------------------------------------------------------------
    async def create_user(
        self, user_id: str, email: str, password_hash: str | None, operator: bool = False
    ) -> User:
        try:
            return await self._db.run(
                lambda conn: _insert_user(conn, user_id, email, password_hash, operator)
            )
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email) from exc

    async def get_user(self, user_id: str) -> User | None:
        return await self._db.run(lambda conn: _one(conn, USERS, "get_user", {"user_id": user_id}))

    async def get_user_by_email(self, email: str) -> User | None:
        return await self._db.run(
            lambda conn: _one(conn, USERS, "get_user_by_email", {"email": email})
        )

    async def list_users(self) -> list[User]:
        return await self._db.run(lambda conn: _all(conn, USERS, "list_users", {}))

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        values = {"user_id": user_id, "password_hash": password_hash}
        return bool(await self._db.run(lambda conn: _changed(conn, "set_password_hash", values)))

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        values = {"user_id": user_id, "disabled": disabled}
        return bool(await self._db.run(lambda conn: _changed(conn, "set_user_disabled", values)))

    # -- members ---------------------------------------------------------------------
    async def add_member(self, tenant_id: str, user_id: str, role: Role) -> Member:
        async def tx(conn: Conn) -> Member:
            async with conn.transaction():
                await _changed(conn, "insert_member", _member(tenant_id, user_id, role))
                return await _inserted(conn, MEMBERS, "get_member", _member_key(tenant_id, user_id))

        try:
            return await self._db.run(tx)
        except ConflictError as exc:
            raise ConflictError(
                f"user {user_id!r} is a member of tenant {tenant_id!r} already"
            ) from exc
        except DataRejected as exc:
            raise DataRejected(
                f"tenant {tenant_id!r} or user {user_id!r} does not exist: {exc}"
            ) from exc

    async def get_role(self, tenant_id: str, user_id: str) -> Role | None:
        row = await self._db.run(
            lambda conn: _fetchrow(conn, "get_role", _member_key(tenant_id, user_id))
        )
        return None if row is None else Role(row["role"])

    async def memberships(self, user_id: str) -> list[Member]:
        return await self._db.run(
            lambda conn: _all(conn, MEMBERS, "memberships", {"user_id": user_id})
        )

    async def list_members(self, tenant_id: str) -> list[Member]:
        return await self._db.run(
            lambda conn: _all(conn, MEMBERS, "list_members", {"tenant_id": tenant_id})
        )

    async def set_role(self, tenant_id: str, user_id: str, role: Role) -> Member | None:
        async def tx(conn: Conn) -> Member | _LastOwner | None:
            async with conn.transaction():
                key = _member_key(tenant_id, user_id)
                if role is not Role.OWNER and await _last_owner(conn, tenant_id, user_id):
                    return _LastOwner(tenant_id, user_id)
                if not await _changed(conn, "set_role", {**key, "role": role.value}):
                    return None
                return await _inserted(conn, MEMBERS, "get_member", key)

        changed = await self._db.run(tx)
        if isinstance(changed, _LastOwner):
            raise changed.refusal()
        return changed

    async def remove_member(self, tenant_id: str, user_id: str) -> bool:
        async def tx(conn: Conn) -> bool | _LastOwner:
            async with conn.transaction():
                if await _last_owner(conn, tenant_id, user_id):
                    return _LastOwner(tenant_id, user_id)
                return bool(await _changed(conn, "remove_member", _member_key(tenant_id, user_id)))

        removed = await self._db.run(tx)
        if isinstance(removed, _LastOwner):
            raise removed.refusal()
        return removed

    # -- invitations -----------------------------------------------------------------
    async def create_invitation(
        self,
        invitation_id: str,
        tenant_id: str,
        email: str,
        role: Role,
        token_hash: str,
        invited_by: str | None,
        ttl_s: float,
    ) -> Invitation:
        values = {
            "invitation_id": invitation_id,
            "tenant_id": tenant_id,
            "email": email,
            "role": role.value,
            "token_hash": token_hash,
            "invited_by": invited_by,
            "ttl_s": float(ttl_s),
        }
        try:
            return await self._db.run(
                lambda conn: _inserted(conn, INVITATIONS, "insert_invitation", values)
            )
        except DataRejected as exc:
            raise DataRejected(f"tenant {tenant_id!r} does not exist: {exc}") from exc

    async def find_invitation(self, token_hash: str) -> Invitation | None:
        return await self._db.run(
            lambda conn: _one(conn, INVITATIONS, "find_invitation", {"token_hash": token_hash})
        )

    async def list_invitations(self, tenant_id: str) -> list[Invitation]:
        return await self._db.run(
            lambda conn: _all(conn, INVITATIONS, "list_invitations", {"tenant_id": tenant_id})
        )

    async def revoke_invitation(self, tenant_id: str, invitation_id: str) -> bool:
        values = {"tenant_id": tenant_id, "invitation_id": invitation_id}
        return bool(await self._db.run(lambda conn: _changed(conn, "revoke_invitation", values)))

    async def accept_invitation(self, token_hash: str, user_id: str) -> Member | None:
        async def tx(conn: Conn) -> Member | None:
            async with conn.transaction():
                row = await _fetchrow(conn, "lock_invitation", {"token_hash": token_hash})
                if row is None:
                    return None
                found = INVITATIONS.decode(row)
                if found.accepted_at is not None or found.revoked or row["expired"]:
                    return None
                await _changed(conn, "mark_invitation_accepted", {"invitation_id": found.id})
                key = _member_key(found.tenant_id, user_id)
                member = _member(found.tenant_id, user_id, found.role)
                if not await _changed(conn, "insert_member_if_none", member):
                    held = await _fetchrow(conn, "lock_role", key)
                    if held is not None and found.role.rank > Role(held["role"]).rank:
                        await _changed(conn, "set_role", member)
                return await _inserted(conn, MEMBERS, "get_member", key)

        return await self._db.run(tx)

    # -- refresh tokens --------------------------------------------------------------
    async def add_refresh_token(self, new: NewRefreshToken) -> RefreshToken:
        return await self._db.run(lambda conn: _insert_refresh_token(conn, new))

    async def rotate_refresh_token(self, token_hash: str, new: NewRefreshToken) -> Rotation:
        async def tx(conn: Conn) -> Rotation:
            async with conn.transaction():
                row = await _fetchrow(conn, "lock_refresh_token", {"token_hash": token_hash})
                if row is None:
                    return Rotation(RotateOutcome.UNKNOWN, None)
                old = REFRESH_TOKENS.decode(row)
                if old.revoked_at is not None:
                    return Rotation(RotateOutcome.REVOKED, old)
                if row["expired"]:
                    return Rotation(RotateOutcome.EXPIRED, old)
                if old.rotated_at is not None:
                    await _changed(conn, "revoke_refresh_family", {"family_id": old.family_id})
                    return Rotation(RotateOutcome.REUSED, old)
                await _changed(conn, "mark_rotated", {"id": old.id})
                successor = NewRefreshToken(
                    new.id, old.family_id, old.user_id, old.tenant_id, new.token_hash, new.ttl_s
                )
                await _insert_refresh_token(conn, successor)
                return Rotation(RotateOutcome.ROTATED, old)

        return await self._db.run(tx)

    async def revoke_refresh_family(self, family_id: str) -> int:
        return await self._db.run(
            lambda conn: _changed(conn, "revoke_refresh_family", {"family_id": family_id})
        )

    async def revoke_refresh_token(self, token_hash: str) -> bool:
        async def tx(conn: Conn) -> bool:
            async with conn.transaction():
                found = await _one(
                    conn, REFRESH_TOKENS, "find_refresh_token", {"token_hash": token_hash}
                )
                if found is None:
                    return False
                await _changed(conn, "revoke_refresh_family", {"family_id": found.family_id})
                return True

        return await self._db.run(tx)

    async def revoke_user_tokens(self, user_id: str, tenant_id: str | None = None) -> int:
        values = {"user_id": user_id, "tenant_id": tenant_id}
        return await self._db.run(lambda conn: _changed(conn, "revoke_user_tokens", values))

    # -- API keys --------------------------------------------------------------------
    async def create_api_key(self, new: NewApiKey) -> ApiKey:
        values = {
            "id": new.id,
            "tenant_id": new.tenant_id,
            "prefix": new.prefix,
            "secret_hash": new.secret_hash,
            "name": new.name,
            "scopes": orjson.dumps(list(new.scopes)).decode(),
            "created_by": new.created_by,
            "ttl_s": None if new.ttl_s is None else float(new.ttl_s),
        }
        try:
            return await self._db.run(
                lambda conn: _inserted(conn, API_KEYS, "insert_api_key", values)
            )
        except ConflictError as exc:
            raise ConflictError(f"API key id {new.id!r} or prefix {new.prefix!r} is taken") from exc
        except DataRejected as exc:
            raise DataRejected(f"tenant {new.tenant_id!r} does not exist: {exc}") from exc

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        return await self._db.run(
            lambda conn: _one(conn, API_KEYS, "find_api_key", {"prefix": prefix})
        )

    async def touch_api_key(self, key_id: str) -> None:
        await self._db.run(lambda conn: _changed(conn, "touch_api_key", {"key_id": key_id}))

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        if tenant_id is None:
            return await self._db.run(lambda conn: _all(conn, API_KEYS, "list_all_api_keys", {}))
        return await self._db.run(
            lambda conn: _all(conn, API_KEYS, "list_api_keys", {"tenant_id": tenant_id})
        )

    async def revoke_api_key(self, key_id: str, tenant_id: str | None) -> bool:
        values = {"key_id": key_id, "tenant_id": tenant_id}
        return bool(await self._db.run(lambda conn: _changed(conn, "revoke_api_key", values)))

    # -- signing keys ----------------------------------------------------------------
    async def signing_keys(self) -> list[SigningKey]:
        return await self._db.run(lambda conn: _all(conn, SIGNING_KEYS, "signing_keys", {}))

    async def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        async def tx(conn: Conn) -> list[SigningKey]:
            async with conn.transaction():
                await _changed(conn, "insert_first_signing_key", _signing_key(candidate))
            # After the commit, in a snapshot of its own: the key another process inserted
            # while this insert waited is seen.
            return await _all(conn, SIGNING_KEYS, "signing_keys", {})

        return await self._db.run(tx)

    async def add_signing_key(self, key: SigningKey) -> list[SigningKey]:
        async def tx(conn: Conn) -> list[SigningKey]:
            async with conn.transaction():
                await _changed(conn, "retire_active_signing_keys", {})
                await _changed(conn, "insert_signing_key", _signing_key(key))
                return await _all(conn, SIGNING_KEYS, "signing_keys", {})

        try:
            return await self._db.run(tx)
        except ConflictError as exc:
            raise ConflictError(
                f"signing key id {key.kid!r} is taken, or another rotation added a key at "
                "the same time"
            ) from exc

    async def retire_signing_key(self, kid: str) -> bool:
        return bool(
            await self._db.run(lambda conn: _changed(conn, "retire_signing_key", {"kid": kid}))
        )


def _member_key(tenant_id: str, user_id: str) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "user_id": user_id}


def _member(tenant_id: str, user_id: str, role: Role) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "user_id": user_id, "role": role.value}


async def _insert_user(
    conn: Conn, user_id: str, email: str, password_hash: str | None, operator: bool
) -> User:
    values = {
        "user_id": user_id,
        "email": email,
        "password_hash": password_hash,
        "operator": operator,
    }
    return await _inserted(conn, USERS, "insert_user", values)


def _user_conflict(
    exc: ConflictError, user_id: str, email: str, tenant_id: str | None = None
) -> ConflictError:
    if _taken(exc, "conveyor_users_email"):
        return ConflictError(f"email {email!r} belongs to another user")
    if tenant_id is not None and _taken(exc, "conveyor_tenants_pkey"):
        return ConflictError(f"tenant {tenant_id!r} exists already")
    return ConflictError(f"user {user_id!r} exists already")


async def _last_owner(conn: Conn, tenant_id: str, user_id: str) -> bool:
    """Whether ``user_id`` is the tenant's only owner. The owners' rows stay locked until
    the transaction ends."""
    stmt = _SQL["tenant_owners"]
    rows = await conn.fetch(stmt.sql, *stmt.args({"tenant_id": tenant_id}))
    return [row["user_id"] for row in rows] == [user_id]


async def _insert_refresh_token(conn: Conn, new: NewRefreshToken) -> RefreshToken:
    values = {
        "id": new.id,
        "family_id": new.family_id,
        "user_id": new.user_id,
        "tenant_id": new.tenant_id,
        "token_hash": new.token_hash,
        "ttl_s": float(new.ttl_s),
    }
    return await _inserted(conn, REFRESH_TOKENS, "insert_refresh_token", values)


def _signing_key(key: SigningKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "private_pem": key.private_pem,
        "public_pem": key.public_pem,
    }
