"""Tenants, users, memberships and invitations on PostgreSQL: the verbs of
:class:`~conveyor.store.accounts.AccountStore` that say who belongs to which tenant, each
one transaction. What a verb checks before it writes is read with ``FOR UPDATE`` (the
tenant's owners, the invitation to accept), so two such verbs at once take turns and the
second sees what the first did.

A verb naming a tenant runs in that tenant's scope (for the API's store, as conveyor_api
under row security, migration 0011); the tenants' list in an operator's. Users, whom no
tenant owns, and the look-ups made before a tenant is known (a user's memberships at
login, an invitation by its token) run in :data:`NO_TENANT`'s scope, through functions of
that migration."""

from __future__ import annotations

from dataclasses import dataclass
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
from conveyor.store.postgres.accounts_statements import (
    NO_TENANT,
    AccountStatements,
    taken,
    tenant_refused,
    timestamp,
)
from conveyor.store.postgres.connection import OPERATOR, Conn, Database, Scope
from conveyor.store.postgres.rows import time_or_none

TENANTS: Table[Tenant] = Table(
    Tenant,
    (
        Column("id"),
        Column("name"),
        Column("created_at", timestamp),
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
        Column("created_at", timestamp),
    ),
)
MEMBERS: Table[Member] = Table(
    Member,
    (
        Column("tenant_id"),
        Column("user_id"),
        Column("email"),
        Column("role", Role),
        Column("created_at", timestamp),
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
        Column("created_at", timestamp),
        Column("expires_at", timestamp),
        Column("accepted_at", time_or_none),
        Column("revoked"),
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


@dataclass(frozen=True, slots=True)
class _LastOwner:
    """What a transaction returns instead of leaving a tenant without an owner: raising
    inside it would cost the store its lane connection."""

    tenant_id: str
    user_id: str

    def refusal(self) -> ConflictError:
        return ConflictError(last_owner_refusal(self.tenant_id, self.user_id))


class PostgresTenancy:
    """Tenants, users, members and invitations: part of ``PostgresStore``'s accounts."""

    _db: Database

    # -- tenants ---------------------------------------------------------------------
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        values = {"tenant_id": tenant_id, "name": name}
        try:
            tenant = await self._db.run(
                lambda conn: _SQL.inserted(conn, TENANTS, "insert_tenant", values),
                Scope(tenant_id),
            )
        except DataRejected as exc:
            raise tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise ConflictError(f"tenant {tenant_id!r} exists already") from exc
        return tenant

    async def signup(
        self, tenant_id: str, tenant_name: str, user_id: str, email: str, password_hash: str
    ) -> tuple[Tenant, User]:
        async def tx(conn: Conn) -> tuple[Tenant, User]:
            async with conn.transaction():
                tenant = await _SQL.inserted(
                    conn, TENANTS, "insert_tenant", {"tenant_id": tenant_id, "name": tenant_name}
                )
                user = await _insert_user(conn, user_id, email, password_hash, operator=False)
                await _SQL.changed(conn, "insert_member", _member(tenant_id, user_id, Role.OWNER))
                return tenant, user

        try:
            # In the new tenant's scope: the tenant and the membership are its rows.
            return await self._db.run(tx, Scope(tenant_id))
        except DataRejected as exc:
            raise tenant_refused(tenant_id, exc) from exc.__cause__
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email, tenant_id) from exc

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._db.run(
            lambda conn: _SQL.one(conn, TENANTS, "get_tenant", {"tenant_id": tenant_id}),
            Scope(tenant_id),
        )

    async def list_tenants(self) -> list[Tenant]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, TENANTS, "list_tenants", {}), OPERATOR
        )

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> bool:
        values = {"tenant_id": tenant_id, "disabled": disabled}
        return bool(
            await self._db.run(
                lambda conn: _SQL.changed(conn, "set_tenant_disabled", values), Scope(tenant_id)
            )
        )

    async def set_tenant_rate_limit(self, tenant_id: str, rate_limit: str | None) -> bool:
        values = {"tenant_id": tenant_id, "rate_limit": rate_limit}
        return bool(
            await self._db.run(
                lambda conn: _SQL.changed(conn, "set_tenant_rate_limit", values), Scope(tenant_id)
            )
        )

    # -- users -----------------------------------------------------------------------
    async def create_user(
        self, user_id: str, email: str, password_hash: str | None, operator: bool = False
    ) -> User:
        try:
            return await self._db.run(
                lambda conn: _insert_user(conn, user_id, email, password_hash, operator),
                NO_TENANT,
            )
        except ConflictError as exc:
            raise _user_conflict(exc, user_id, email) from exc

    async def get_user(self, user_id: str) -> User | None:
        return await self._db.run(
            lambda conn: _SQL.one(conn, USERS, "get_user", {"user_id": user_id}), NO_TENANT
        )

    async def get_user_by_email(self, email: str) -> User | None:
        return await self._db.run(
            lambda conn: _SQL.one(conn, USERS, "get_user_by_email", {"email": email}),
            NO_TENANT,
        )

    async def list_users(self) -> list[User]:
        return await self._db.run(lambda conn: _SQL.all(conn, USERS, "list_users", {}), NO_TENANT)

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        values = {"user_id": user_id, "password_hash": password_hash}
        return bool(
            await self._db.run(
                lambda conn: _SQL.count(conn, "set_password_hash", values), NO_TENANT
            )
        )

    async def set_user_disabled(self, user_id: str, disabled: bool) -> bool:
        values = {"user_id": user_id, "disabled": disabled}
        return bool(
            await self._db.run(
                lambda conn: _SQL.count(conn, "set_user_disabled", values), NO_TENANT
            )
        )

    # -- members ---------------------------------------------------------------------
    async def add_member(self, tenant_id: str, user_id: str, role: Role) -> Member:
        async def tx(conn: Conn) -> Member:
            async with conn.transaction():
                await _SQL.changed(conn, "insert_member", _member(tenant_id, user_id, role))
                return await _SQL.inserted(
                    conn, MEMBERS, "get_member", _member_key(tenant_id, user_id)
                )

        try:
            return await self._db.run(tx, Scope(tenant_id))
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
            lambda conn: _SQL.fetchrow(conn, "get_role", _member_key(tenant_id, user_id)),
            Scope(tenant_id),
        )
        return None if row is None else Role(row["role"])

    async def memberships(self, user_id: str) -> list[Member]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, MEMBERS, "memberships", {"user_id": user_id}), NO_TENANT
        )

    async def list_members(self, tenant_id: str) -> list[Member]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, MEMBERS, "list_members", {"tenant_id": tenant_id}),
            Scope(tenant_id),
        )

    async def set_role(self, tenant_id: str, user_id: str, role: Role) -> Member | None:
        async def tx(conn: Conn) -> Member | _LastOwner | None:
            async with conn.transaction():
                key = _member_key(tenant_id, user_id)
                if role is not Role.OWNER and await _last_owner(conn, tenant_id, user_id):
                    return _LastOwner(tenant_id, user_id)
                if not await _SQL.changed(conn, "set_role", {**key, "role": role.value}):
                    return None
                return await _SQL.inserted(conn, MEMBERS, "get_member", key)

        changed = await self._db.run(tx, Scope(tenant_id))
        if isinstance(changed, _LastOwner):
            raise changed.refusal()
        return changed

    async def remove_member(self, tenant_id: str, user_id: str) -> bool:
        async def tx(conn: Conn) -> bool | _LastOwner:
            async with conn.transaction():
                if await _last_owner(conn, tenant_id, user_id):
                    return _LastOwner(tenant_id, user_id)
                return bool(
                    await _SQL.changed(conn, "remove_member", _member_key(tenant_id, user_id))
                )

        removed = await self._db.run(tx, Scope(tenant_id))
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
                lambda conn: _SQL.inserted(conn, INVITATIONS, "insert_invitation", values),
                Scope(tenant_id),
            )
        except DataRejected as exc:
            raise DataRejected(f"tenant {tenant_id!r} does not exist: {exc}") from exc

    async def find_invitation(self, token_hash: str) -> Invitation | None:
        return await self._db.run(
            lambda conn: _SQL.one(conn, INVITATIONS, "find_invitation", {"token_hash": token_hash}),
            NO_TENANT,
        )

    async def list_invitations(self, tenant_id: str) -> list[Invitation]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, INVITATIONS, "list_invitations", {"tenant_id": tenant_id}),
            Scope(tenant_id),
        )

    async def revoke_invitation(self, tenant_id: str, invitation_id: str) -> bool:
        values = {"tenant_id": tenant_id, "invitation_id": invitation_id}
        return bool(
            await self._db.run(
                lambda conn: _SQL.changed(conn, "revoke_invitation", values), Scope(tenant_id)
            )
        )

    async def accept_invitation(self, token_hash: str, user_id: str) -> Member | None:
        async def tx(conn: Conn) -> Member | None:
            async with conn.transaction():
                invited = await _SQL.one(
                    conn, INVITATIONS, "find_invitation", {"token_hash": token_hash}
                )
                if invited is None:
                    return None
                # Found by its token; what follows is its tenant's rows only.
                await _SQL.fetchrow(conn, "enter_tenant", {"tenant_id": invited.tenant_id})
                row = await _SQL.fetchrow(conn, "lock_invitation", {"token_hash": token_hash})
                if row is None:
                    return None
                found = INVITATIONS.decode(row)
                if found.accepted_at is not None or found.revoked or row["expired"]:
                    return None
                await _SQL.changed(conn, "mark_invitation_accepted", {"invitation_id": found.id})
                key = _member_key(found.tenant_id, user_id)
                member = _member(found.tenant_id, user_id, found.role)
                if not await _SQL.changed(conn, "insert_member_if_none", member):
                    held = await _SQL.fetchrow(conn, "lock_role", key)
                    if held is not None and found.role.rank > Role(held["role"]).rank:
                        await _SQL.changed(conn, "set_role", member)
                return await _SQL.inserted(conn, MEMBERS, "get_member", key)

        return await self._db.run(tx, NO_TENANT)


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
    return await _SQL.inserted(conn, USERS, "insert_user", values)


def _user_conflict(
    exc: ConflictError, user_id: str, email: str, tenant_id: str | None = None
) -> ConflictError:
    if taken(exc, "conveyor_users_email"):
        return ConflictError(f"email {email!r} belongs to another user")
    if tenant_id is not None and taken(exc, "conveyor_tenants_pkey"):
        return ConflictError(f"tenant {tenant_id!r} exists already")
    return ConflictError(f"user {user_id!r} exists already")


async def _last_owner(conn: Conn, tenant_id: str, user_id: str) -> bool:
    """Whether ``user_id`` is the tenant's only owner. The owners' rows stay locked until
    the transaction ends."""
    rows = await _SQL.fetch(conn, "tenant_owners", {"tenant_id": tenant_id})
    return [row["user_id"] for row in rows] == [user_id]
