"""Tenants, users, memberships and invitations on SQLite: the verbs of
:class:`~conveyor.store.accounts.AccountStore` that say who belongs to which tenant. Every
verb that writes holds the write lock from its first statement (``BEGIN IMMEDIATE``), so
the checks it makes before it writes (the tenant's last owner, an invitation accepted
already) cannot be raced by another connection or process."""

from __future__ import annotations

import sqlite3
from typing import Any

from conveyor.store.accounts import (
    Invitation,
    Member,
    Role,
    Tenant,
    User,
    last_owner_refusal,
)
from conveyor.store.base import ConflictError, DataRejected
from conveyor.store.columns import Column, Table
from conveyor.store.sqlite.accounts_statements import AccountStatements, taken, tenant_refused
from conveyor.store.sqlite.connection import Database

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
_SQL = AccountStatements(
    "accounts_tenants.sql",
    {
        "tenant_columns": TENANTS,
        "user_columns": USERS,
        "member_columns": MEMBERS,
        "invitation_columns": INVITATIONS,
    },
)


class SqliteTenancy:
    """Tenants, users, members and invitations: part of ``SqliteStore``'s accounts."""

    _db: Database

    # -- tenants ---------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        values = {"tenant_id": tenant_id, "name": name}
        try:
            return await self._db.write(
                lambda conn, now: _SQL.inserted(
                    conn, TENANTS, "insert_tenant", {**values, "now": now}
                )
            )
        except DataRejected as exc:
            raise tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise ConflictError(f"tenant {tenant_id!r} exists already") from exc

    async def signup(
        self, tenant_id: str, tenant_name: str, user_id: str, email: str, password_hash: str
    ) -> tuple[Tenant, User]:
        def tx(conn: sqlite3.Connection, now: float) -> tuple[Tenant, User]:
            tenant = _SQL.inserted(
                conn,
                TENANTS,
                "insert_tenant",
                {"tenant_id": tenant_id, "name": tenant_name, "now": now},
            )
            user = _insert_user(conn, now, user_id, email, password_hash, operator=False)
            _SQL.run(conn, "insert_member", _member(tenant_id, user_id, Role.OWNER, now))
            return tenant, user

        try:
            return await self._db.write(tx)
        except DataRejected as exc:
            raise tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email, tenant_id) from exc

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._db.read(
            lambda conn, now: _SQL.one(conn, TENANTS, "get_tenant", {"tenant_id": tenant_id})
        )

    async def list_tenants(self) -> list[Tenant]:
        return await self._db.read(lambda conn, now: _SQL.all(conn, TENANTS, "list_tenants", {}))

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> bool:
        values = {"tenant_id": tenant_id, "disabled": disabled}
        return bool(
            await self._db.write(
                lambda conn, now: _SQL.changed(conn, "set_tenant_disabled", values)
            )
        )

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> bool:
        values = {"tenant_id": tenant_id, "rate_limit": rate_limit}
        return bool(
            await self._db.write(
                lambda conn, now: _SQL.changed(conn, "set_tenant_rate_limit", values)
            )
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
            lambda conn, now: _SQL.one(conn, USERS, "get_user", {"user_id": user_id})
        )

    async def get_user_by_email(self, email: str) -> User | None:
        return await self._db.read(
            lambda conn, now: _SQL.one(conn, USERS, "get_user_by_email", {"email": email})
        )

    async def list_users(self) -> list[User]:
        return await self._db.read(lambda conn, now: _SQL.all(conn, USERS, "list_users", {}))

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        values = {"user_id": user_id, "password_hash": password_hash}
        return bool(
            await self._db.write(lambda conn, now: _SQL.changed(conn, "set_password_hash", values))
        )

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        values = {"user_id": user_id, "disabled": disabled}
        return bool(
            await self._db.write(lambda conn, now: _SQL.changed(conn, "set_user_disabled", values))
        )

    # -- members ---------------------------------------------------------------------
    async def add_member(self, tenant_id: str, user_id: str, role: Role) -> Member:
        def tx(conn: sqlite3.Connection, now: float) -> Member:
            _SQL.run(conn, "insert_member", _member(tenant_id, user_id, role, now))
            return _SQL.inserted(conn, MEMBERS, "get_member", _member_key(tenant_id, user_id))

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
            lambda conn, now: _SQL.run(conn, "get_role", _member_key(tenant_id, user_id)).fetchone()
        )
        return None if row is None else Role(row[0])

    async def memberships(self, user_id: str) -> list[Member]:
        return await self._db.read(
            lambda conn, now: _SQL.all(conn, MEMBERS, "memberships", {"user_id": user_id})
        )

    async def list_members(self, tenant_id: str) -> list[Member]:
        return await self._db.read(
            lambda conn, now: _SQL.all(conn, MEMBERS, "list_members", {"tenant_id": tenant_id})
        )

    async def set_role(self, tenant_id: str, user_id: str, role: Role) -> Member | None:
        def tx(conn: sqlite3.Connection, now: float) -> Member | None:
            key = _member_key(tenant_id, user_id)
            if role is not Role.OWNER:
                _keep_an_owner(conn, tenant_id, user_id)
            if not _SQL.changed(conn, "set_role", {**key, "role": role}):
                return None
            return _SQL.inserted(conn, MEMBERS, "get_member", key)

        return await self._db.write(tx)

    async def remove_member(self, tenant_id: str, user_id: str) -> bool:
        def tx(conn: sqlite3.Connection, now: float) -> bool:
            _keep_an_owner(conn, tenant_id, user_id)
            return bool(_SQL.changed(conn, "remove_member", _member_key(tenant_id, user_id)))

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
                lambda conn, now: _SQL.inserted(
                    conn, INVITATIONS, "insert_invitation", {**values, "now": now}
                )
            )
        except DataRejected as exc:
            raise DataRejected(f"tenant {tenant_id!r} does not exist: {exc}") from exc

    async def find_invitation(self, token_hash: str) -> Invitation | None:
        return await self._db.read(
            lambda conn, now: _SQL.one(
                conn, INVITATIONS, "find_invitation", {"token_hash": token_hash}
            )
        )

    async def list_invitations(self, tenant_id: str) -> list[Invitation]:
        return await self._db.read(
            lambda conn, now: _SQL.all(
                conn, INVITATIONS, "list_invitations", {"tenant_id": tenant_id}
            )
        )

    async def revoke_invitation(self, tenant_id: str, invitation_id: str) -> bool:
        values = {"tenant_id": tenant_id, "invitation_id": invitation_id}
        return bool(
            await self._db.write(lambda conn, now: _SQL.changed(conn, "revoke_invitation", values))
        )

    async def accept_invitation(self, token_hash: str, user_id: str) -> Member | None:
        def tx(conn: sqlite3.Connection, now: float) -> Member | None:
            found = _SQL.one(conn, INVITATIONS, "find_invitation", {"token_hash": token_hash})
            if (
                found is None
                or found.accepted_at is not None
                or found.revoked
                or found.expires_at <= now
            ):
                return None
            _SQL.run(conn, "mark_invitation_accepted", {"invitation_id": found.id, "now": now})
            key = _member_key(found.tenant_id, user_id)
            held = _SQL.run(conn, "get_role", key).fetchone()
            if held is None:
                _SQL.run(conn, "insert_member", _member(found.tenant_id, user_id, found.role, now))
            elif found.role.rank > Role(held[0]).rank:
                _SQL.run(conn, "set_role", {**key, "role": found.role})
            return _SQL.inserted(conn, MEMBERS, "get_member", key)

        return await self._db.write(tx)


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
    return _SQL.inserted(conn, USERS, "insert_user", values)


def _user_conflict(
    exc: ConflictError, user_id: str, email: str, tenant_id: str | None = None
) -> ConflictError:
    if taken(exc, "users.email"):
        return ConflictError(f"email {email!r} belongs to another user")
    if tenant_id is not None and taken(exc, "tenants.id"):
        return ConflictError(f"tenant {tenant_id!r} exists already")
    return ConflictError(f"user {user_id!r} exists already")


def _keep_an_owner(conn: sqlite3.Connection, tenant_id: str, user_id: str) -> None:
    """Raise ConflictError if ``user_id`` is the tenant's only owner (who must not stop
    being one)."""
    owners = [row[0] for row in _SQL.run(conn, "tenant_owners", {"tenant_id": tenant_id})]
    if owners == [user_id]:
        raise ConflictError(last_owner_refusal(tenant_id, user_id))
