"""Accounts on SQLite (:class:`~conveyor.store.accounts.AccountStore`): each verb one
transaction on the store's thread. Every verb that writes holds the write lock from its
first statement (``BEGIN IMMEDIATE``), so the checks a verb makes before it writes (the
last owner, a token already rotated, an active signing key) cannot be raced by another
connection or process."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from typing import Any, TypeVar

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
from conveyor.store.base import ConflictError, DataRejected
from conveyor.store.columns import Column, Table, column_list, tuple_from_json
from conveyor.store.sqlfile import load_parts, load_statements
from conveyor.store.sqlite.connection import Database

R = TypeVar("R")

_SQL = load_statements(__package__, "?", "accounts.sql")
_PARTS = load_parts(__package__, "accounts.sql")

TENANTS: Table[Tenant] = Table(
    Tenant,
    (
        Column("id"),
        Column("name"),
        Column("created_at"),
        Column("disabled", bool),
        Column("rate_limit"),
    ),
)
USERS: Table[User] = Table(
    User,
    (
        Column("id"),
        Column("email"),
        Column("password_hash"),
        Column("operator", bool),
        Column("disabled", bool),
        Column("created_at"),
    ),
)
MEMBERS: Table[Member] = Table(
    Member,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("email"),
        Column("role", Role),
        Column("created_at"),
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
        Column("created_at"),
        Column("expires_at"),
        Column("accepted_at"),
        Column("revoked", bool),
    ),
)
REFRESH_TOKENS: Table[RefreshToken] = Table(
    RefreshToken,
    tuple(
        Column(name)
        for name in (
            "id",
            "family_id",
            "user_id",
            "tenant_id",
            "token_hash",
            "created_at",
            "expires_at",
            "rotated_at",
            "revoked_at",
        )
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
        Column("created_at"),
        Column("last_used_at"),
        Column("expires_at"),
        Column("revoked_at"),
    ),
)
SIGNING_KEYS: Table[SigningKey] = Table(
    SigningKey,
    tuple(
        Column(name)
        for name in ("kid", "algorithm", "private_pem", "public_pem", "created_at", "retired_at")
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


def _run(conn: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> sqlite3.Cursor:
    statement = _SQL[name]
    return conn.execute(statement.sql, statement.args(values))


def _changed(conn: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> int:
    return _run(conn, name, values).rowcount


def _taken(exc: ConflictError, column: str) -> bool:
    """Whether ``exc`` broke the uniqueness of ``column`` (``table.column``)."""
    return f"conveyor_{column}" in str(exc.__cause__)


def _tenant_refused(tenant_id: str, exc: DataRejected) -> DataRejected:
    if re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        return exc
    return DataRejected(f"tenant id {tenant_id!r} must match {TENANT_ID_PATTERN}: {exc}")


class SqliteAccounts:
    """The :class:`~conveyor.store.accounts.AccountStore` verbs of ``SqliteStore``."""

    _db: Database

    # -- tenants ---------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        values = {"tenant_id": tenant_id, "name": name}
        try:
            return await self._db.write(
                lambda conn, now: TENANTS.decode(
                    _run(conn, "insert_tenant", {**values, "now": now}).fetchone()
                )
            )
        except DataRejected as exc:
            raise _tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise ConflictError(f"tenant {tenant_id!r} exists already") from exc

    async def signup(
        self, tenant_id: str, tenant_name: str, user_id: str, email: str, password_hash: str
    ) -> tuple[Tenant, User]:
        def tx(conn: sqlite3.Connection, now: float) -> tuple[Tenant, User]:
            tenant = TENANTS.decode(
                _run(
                    conn, "insert_tenant", {"tenant_id": tenant_id, "name": tenant_name, "now": now}
                ).fetchone()
            )
            user = _insert_user(conn, now, user_id, email, password_hash, operator=False)
            _run(conn, "insert_member", _member(tenant_id, user_id, Role.OWNER, now))
            return tenant, user

        try:
            return await self._db.write(tx)
        except DataRejected as exc:
            raise _tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email, tenant_id) from exc

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._db.read(
            lambda conn, now: _one(conn, TENANTS, "get_tenant", {"tenant_id": tenant_id})
        )

    async def list_tenants(self) -> list[Tenant]:
        return await self._db.read(lambda conn, now: _all(conn, TENANTS, "list_tenants", {}))

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> bool:
        values = {"tenant_id": tenant_id, "disabled": disabled}
        return bool(
            await self._db.write(lambda conn, now: _changed(conn, "set_tenant_disabled", values))
        )

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> bool:
        values = {"tenant_id": tenant_id, "rate_limit": rate_limit}
        return bool(
            await self._db.write(lambda conn, now: _changed(conn, "set_tenant_rate_limit", values))
        )

    # -- users -----------------------------------------------------------------------
    async def create_user(
        self, user_id: str, email: str, password_hash: str | None, operator: bool = False
    ) -> User:
        try:
            return await self._db.write(
                lambda conn, now: _insert_user(conn, now, user_id, email, password_hash, operator)
            )
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email) from exc

    async def get_user(self, user_id: str) -> User | None:
        return await self._db.read(
            lambda conn, now: _one(conn, USERS, "get_user", {"user_id": user_id})
        )

    async def get_user_by_email(self, email: str) -> User | None:
        return await self._db.read(
            lambda conn, now: _one(conn, USERS, "get_user_by_email", {"email": email})
        )

    async def list_users(self) -> list[User]:
        return await self._db.read(lambda conn, now: _all(conn, USERS, "list_users", {}))

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        values = {"user_id": user_id, "password_hash": password_hash}
        return bool(
            await self._db.write(lambda conn, now: _changed(conn, "set_password_hash", values))
        )

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        values = {"user_id": user_id, "disabled": disabled}
        return bool(
            await self._db.write(lambda conn, now: _changed(conn, "set_user_disabled", values))
        )

    # -- members ---------------------------------------------------------------------
    async def add_member(self, tenant_id: str, user_id: str, role: Role) -> Member:
        def tx(conn: sqlite3.Connection, now: float) -> Member:
            _run(conn, "insert_member", _member(tenant_id, user_id, role, now))
            return MEMBERS.decode(
                _run(conn, "get_member", _member_key(tenant_id, user_id)).fetchone()
            )

        try:
            return await self._db.write(tx)
        except ConflictError as exc:
            raise ConflictError(
                f"user {user_id!r} is a member of tenant {tenant_id!r} already"
            ) from exc
        except DataRejected as exc:
            raise DataRejected(
                f"tenant {tenant_id!r} or user {user_id!r} does not exist: {exc}"
            ) from exc

    async def get_role(self, tenant_id: str, user_id: str) -> Role | None:
        row = await self._db.read(
            lambda conn, now: _run(conn, "get_role", _member_key(tenant_id, user_id)).fetchone()
        )
        return None if row is None else Role(row[0])

    async def memberships(self, user_id: str) -> list[Member]:
        return await self._db.read(
            lambda conn, now: _all(conn, MEMBERS, "memberships", {"user_id": user_id})
        )

    async def list_members(self, tenant_id: str) -> list[Member]:
        return await self._db.read(
            lambda conn, now: _all(conn, MEMBERS, "list_members", {"tenant_id": tenant_id})
        )

    async def set_role(self, tenant_id: str, user_id: str, role: Role) -> Member | None:
        def tx(conn: sqlite3.Connection, now: float) -> Member | None:
            key = _member_key(tenant_id, user_id)
            if role is not Role.OWNER:
                _keep_an_owner(conn, tenant_id, user_id)
            if not _changed(conn, "set_role", {**key, "role": role}):
                return None
            return MEMBERS.decode(_run(conn, "get_member", key).fetchone())

        return await self._db.write(tx)

    async def remove_member(self, tenant_id: str, user_id: str) -> bool:
        def tx(conn: sqlite3.Connection, now: float) -> bool:
            _keep_an_owner(conn, tenant_id, user_id)
            return bool(_changed(conn, "remove_member", _member_key(tenant_id, user_id)))

        return await self._db.write(tx)

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
            "role": role,
            "token_hash": token_hash,
            "invited_by": invited_by,
            "ttl_s": ttl_s,
        }
        try:
            return await self._db.write(
                lambda conn, now: INVITATIONS.decode(
                    _run(conn, "insert_invitation", {**values, "now": now}).fetchone()
                )
            )
        except DataRejected as exc:
            raise DataRejected(f"tenant {tenant_id!r} does not exist: {exc}") from exc

    async def find_invitation(self, token_hash: str) -> Invitation | None:
        return await self._db.read(
            lambda conn, now: _one(conn, INVITATIONS, "find_invitation", {"token_hash": token_hash})
        )

    async def list_invitations(self, tenant_id: str) -> list[Invitation]:
        return await self._db.read(
            lambda conn, now: _all(conn, INVITATIONS, "list_invitations", {"tenant_id": tenant_id})
        )

    async def revoke_invitation(self, tenant_id: str, invitation_id: str) -> bool:
        values = {"tenant_id": tenant_id, "invitation_id": invitation_id}
        return bool(
            await self._db.write(lambda conn, now: _changed(conn, "revoke_invitation", values))
        )

    async def accept_invitation(self, token_hash: str, user_id: str) -> Member | None:
        def tx(conn: sqlite3.Connection, now: float) -> Member | None:
            found = _one(conn, INVITATIONS, "find_invitation", {"token_hash": token_hash})
            if (
                found is None
                or found.accepted_at is not None
                or found.revoked
                or found.expires_at <= now
            ):
                return None
            _run(conn, "mark_invitation_accepted", {"invitation_id": found.id, "now": now})
            key = _member_key(found.tenant_id, user_id)
            held = _run(conn, "get_role", key).fetchone()
            if held is None:
                _run(conn, "insert_member", _member(found.tenant_id, user_id, found.role, now))
            elif found.role.rank > Role(held[0]).rank:
                _run(conn, "set_role", {**key, "role": found.role})
            return MEMBERS.decode(_run(conn, "get_member", key).fetchone())

        return await self._db.write(tx)

    # -- refresh tokens --------------------------------------------------------------
    async def add_refresh_token(self, new: NewRefreshToken) -> RefreshToken:
        return await self._db.write(lambda conn, now: _insert_refresh_token(conn, now, new))

    async def rotate_refresh_token(self, token_hash: str, new: NewRefreshToken) -> Rotation:
        def tx(conn: sqlite3.Connection, now: float) -> Rotation:
            old = _one(conn, REFRESH_TOKENS, "find_refresh_token", {"token_hash": token_hash})
            if old is None:
                return Rotation(RotateOutcome.UNKNOWN, None)
            if old.revoked_at is not None:
                return Rotation(RotateOutcome.REVOKED, old)
            if old.expires_at <= now:
                return Rotation(RotateOutcome.EXPIRED, old)
            if old.rotated_at is not None:
                _run(conn, "revoke_refresh_family", {"family_id": old.family_id, "now": now})
                return Rotation(RotateOutcome.REUSED, old)
            _run(conn, "mark_rotated", {"id": old.id, "now": now})
            successor = NewRefreshToken(
                new.id, old.family_id, old.user_id, old.tenant_id, new.token_hash, new.ttl_s
            )
            _insert_refresh_token(conn, now, successor)
            return Rotation(RotateOutcome.ROTATED, old)

        return await self._db.write(tx)

    async def revoke_refresh_family(self, family_id: str) -> int:
        return await self._db.write(
            lambda conn, now: _changed(
                conn, "revoke_refresh_family", {"family_id": family_id, "now": now}
            )
        )

    async def revoke_refresh_token(self, token_hash: str) -> bool:
        def tx(conn: sqlite3.Connection, now: float) -> bool:
            found = _one(conn, REFRESH_TOKENS, "find_refresh_token", {"token_hash": token_hash})
            if found is None:
                return False
            _run(conn, "revoke_refresh_family", {"family_id": found.family_id, "now": now})
            return True

        return await self._db.write(tx)

    async def revoke_user_tokens(self, user_id: str, tenant_id: str | None = None) -> int:
        values = {"user_id": user_id, "tenant_id": tenant_id}
        return await self._db.write(
            lambda conn, now: _changed(conn, "revoke_user_tokens", {**values, "now": now})
        )

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
            "ttl_s": new.ttl_s,
        }
        try:
            return await self._db.write(
                lambda conn, now: API_KEYS.decode(
                    _run(conn, "insert_api_key", {**values, "now": now}).fetchone()
                )
            )
        except ConflictError as exc:
            raise ConflictError(f"API key id {new.id!r} or prefix {new.prefix!r} is taken") from exc
        except DataRejected as exc:
            raise DataRejected(f"tenant {new.tenant_id!r} does not exist: {exc}") from exc

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        return await self._db.read(
            lambda conn, now: _one(conn, API_KEYS, "find_api_key", {"prefix": prefix})
        )

    async def touch_api_key(self, key_id: str) -> None:
        await self._db.write(
            lambda conn, now: _run(conn, "touch_api_key", {"key_id": key_id, "now": now})
        )

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        if tenant_id is None:
            return await self._db.read(
                lambda conn, now: _all(conn, API_KEYS, "list_all_api_keys", {})
            )
        return await self._db.read(
            lambda conn, now: _all(conn, API_KEYS, "list_api_keys", {"tenant_id": tenant_id})
        )

    async def revoke_api_key(self, key_id: str, tenant_id: str | None) -> bool:
        values = {"key_id": key_id, "tenant_id": tenant_id}
        return bool(
            await self._db.write(
                lambda conn, now: _changed(conn, "revoke_api_key", {**values, "now": now})
            )
        )

    # -- signing keys ----------------------------------------------------------------
    async def signing_keys(self) -> list[SigningKey]:
        return await self._db.read(lambda conn, now: _all(conn, SIGNING_KEYS, "signing_keys", {}))

    async def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        def tx(conn: sqlite3.Connection, now: float) -> list[SigningKey]:
            _run(conn, "insert_first_signing_key", _signing_key(candidate, now))
            return _all(conn, SIGNING_KEYS, "signing_keys", {})

        return await self._db.write(tx)

    async def add_signing_key(self, key: SigningKey) -> list[SigningKey]:
        def tx(conn: sqlite3.Connection, now: float) -> list[SigningKey]:
            _run(conn, "retire_active_signing_keys", {"now": now})
            _run(conn, "insert_signing_key", _signing_key(key, now))
            return _all(conn, SIGNING_KEYS, "signing_keys", {})

        try:
            return await self._db.write(tx)
        except ConflictError as exc:
            raise ConflictError(f"signing key id {key.kid!r} is taken") from exc

    async def retire_signing_key(self, kid: str) -> bool:
        return bool(
            await self._db.write(
                lambda conn, now: _changed(conn, "retire_signing_key", {"kid": kid, "now": now})
            )
        )


def _one(
    conn: sqlite3.Connection, table: Table[R], name: str, values: Mapping[str, Any]
) -> R | None:
    row = _run(conn, name, values).fetchone()
    return None if row is None else table.decode(row)


def _all(
    conn: sqlite3.Connection, table: Table[R], name: str, values: Mapping[str, Any]
) -> list[R]:
    return [table.decode(row) for row in _run(conn, name, values)]


def _member_key(tenant_id: str, user_id: str) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "user_id": user_id}


def _member(tenant_id: str, user_id: str, role: Role, now: float) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "user_id": user_id, "role": role, "now": now}


def _insert_user(
    conn: sqlite3.Connection,
    now: float,
    user_id: str,
    email: str,
    password_hash: str | None,
    operator: bool,
) -> User:
    values = {
        "user_id": user_id,
        "email": email,
        "password_hash": password_hash,
        "operator": operator,
        "now": now,
    }
    return USERS.decode(_run(conn, "insert_user", values).fetchone())


def _user_conflict(
    exc: ConflictError, user_id: str, email: str, tenant_id: str | None = None
) -> ConflictError:
    if _taken(exc, "users.email"):
        return ConflictError(f"email {email!r} belongs to another user")
    if tenant_id is not None and _taken(exc, "tenants.id"):
        return ConflictError(f"tenant {tenant_id!r} exists already")
    return ConflictError(f"user {user_id!r} exists already")


def _keep_an_owner(conn: sqlite3.Connection, tenant_id: str, user_id: str) -> None:
    """Raise ConflictError if ``user_id`` is the tenant's only owner (who must not stop
    being one)."""
    owners = [row[0] for row in _run(conn, "tenant_owners", {"tenant_id": tenant_id})]
    if owners == [user_id]:
        raise ConflictError(last_owner_refusal(tenant_id, user_id))


def _insert_refresh_token(
    conn: sqlite3.Connection, now: float, new: NewRefreshToken
) -> RefreshToken:
    values = {
        "id": new.id,
        "family_id": new.family_id,
        "user_id": new.user_id,
        "tenant_id": new.tenant_id,
        "token_hash": new.token_hash,
        "ttl_s": new.ttl_s,
        "now": now,
    }
    row = _run(conn, "insert_refresh_token", values).fetchone()
    return REFRESH_TOKENS.decode(row)


def _signing_key(key: SigningKey, now: float) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "private_pem": key.private_pem,
        "public_pem": key.public_pem,
        "now": now,
    }
