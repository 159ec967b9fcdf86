"""Sessions on PostgreSQL: refresh tokens (stored hashed, rotated within a family, a
reused one revoking its family) and the keys that sign access tokens. The token to rotate
is read with ``FOR UPDATE``, so two rotations of it take turns; the one active signing
key is kept by a unique index. No tenant owns these rows: the API's role reaches them
only through the functions of migration 0011 (docs/operations.md)."""

from __future__ import annotations

from typing import Any

from conveyor.store.accounts import (
    NewRefreshToken,
    RefreshToken,
    RotateOutcome,
    Rotation,
    SigningKey,
)
from conveyor.store.base import ConflictError
from conveyor.store.columns import Column, Table
from conveyor.store.postgres.accounts_statements import NO_TENANT, AccountStatements, timestamp
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.rows import time_or_none

REFRESH_TOKENS: Table[RefreshToken] = Table(
    RefreshToken,
    (
        Column("id"),
        Column("family_id"),
        Column("user_id"),
        Column("tenant_id"),
        Column("token_hash"),
        Column("created_at", timestamp),
        Column("expires_at", timestamp),
        Column("rotated_at", time_or_none),
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
        Column("created_at", timestamp),
        Column("retired_at", time_or_none),
    ),
)
_SQL = AccountStatements(
    "accounts_sessions.sql",
    {"refresh_token_columns": REFRESH_TOKENS, "signing_key_columns": SIGNING_KEYS},
)


class PostgresSessions:
    """Refresh tokens and signing keys: part of ``PostgresStore``'s accounts. Every verb
    runs in :data:`NO_TENANT`'s scope, through the functions of migration 0011."""

    _db: Database

    # -- refresh tokens --------------------------------------------------------------
    async def add_refresh_token(self, new: NewRefreshToken) -> RefreshToken:
        return await self._db.run(lambda conn: _insert_refresh_token(conn, new), NO_TENANT)

    async def rotate_refresh_token(self, token_hash: str, new: NewRefreshToken) -> Rotation:
        async def tx(conn: Conn) -> Rotation:
            async with conn.transaction():
                row = await _SQL.fetchrow(conn, "lock_refresh_token", {"token_hash": token_hash})
                if row is None:
                    return Rotation(RotateOutcome.UNKNOWN, None)
                old = REFRESH_TOKENS.decode(row)
                if old.revoked_at is not None:
                    return Rotation(RotateOutcome.REVOKED, old)
                if row["expired"]:
                    return Rotation(RotateOutcome.EXPIRED, old)
                if old.rotated_at is not None:
                    await _SQL.count(conn, "revoke_refresh_family", {"family_id": old.family_id})
                    return Rotation(RotateOutcome.REUSED, old)
                await _SQL.count(conn, "mark_rotated", {"token_hash": old.token_hash})
                successor = NewRefreshToken(
                    new.id, old.family_id, old.user_id, old.tenant_id, new.token_hash, new.ttl_s
                )
                await _insert_refresh_token(conn, successor)
                return Rotation(RotateOutcome.ROTATED, old)

        return await self._db.run(tx, NO_TENANT)

    async def revoke_refresh_family(self, family_id: str) -> int:
        return await self._db.run(
            lambda conn: _SQL.count(conn, "revoke_refresh_family", {"family_id": family_id}),
            NO_TENANT,
        )

    async def revoke_refresh_token(self, token_hash: str) -> bool:
        async def tx(conn: Conn) -> bool:
            async with conn.transaction():
                row = await _SQL.fetchrow(conn, "lock_refresh_token", {"token_hash": token_hash})
                if row is None:
                    return False
                await _SQL.count(conn, "revoke_refresh_family", {"family_id": row["family_id"]})
                return True

        return await self._db.run(tx, NO_TENANT)

    async def revoke_user_tokens(self, user_id: str, tenant_id: str | None = None) -> int:
        values = {"user_id": user_id, "tenant_id": tenant_id}
        return await self._db.run(
            lambda conn: _SQL.count(conn, "revoke_user_tokens", values), NO_TENANT
        )

    # -- signing keys ----------------------------------------------------------------
    async def signing_keys(self) -> list[SigningKey]:
        return await self._db.run(
            lambda conn: _SQL.all(conn, SIGNING_KEYS, "signing_keys", {}), NO_TENANT
        )

    async def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        await self._db.run(
            lambda conn: _SQL.count(conn, "insert_first_signing_key", _signing_key(candidate)),
            NO_TENANT,
        )
        # After the commit, in a transaction of its own: the key another process inserted
        # while this insert waited is seen.
        return await self.signing_keys()

    async def add_signing_key(self, key: SigningKey) -> list[SigningKey]:
        async def tx(conn: Conn) -> list[SigningKey]:
            async with conn.transaction():
                await _SQL.fetchrow(conn, "add_signing_key", _signing_key(key))
                return await _SQL.all(conn, SIGNING_KEYS, "signing_keys", {})

        try:
            return await self._db.run(tx, NO_TENANT)
        except ConflictError as exc:
            raise ConflictError(
                f"signing key id {key.kid!r} is taken, or another rotation added a key at "
                "the same time"
            ) from exc

    async def retire_signing_key(self, kid: str) -> bool:
        return bool(
            await self._db.run(
                lambda conn: _SQL.count(conn, "retire_signing_key", {"kid": kid}), NO_TENANT
            )
        )


async def _insert_refresh_token(conn: Conn, new: NewRefreshToken) -> RefreshToken:
    values = {
        "id": new.id,
        "family_id": new.family_id,
        "user_id": new.user_id,
        "tenant_id": new.tenant_id,
        "token_hash": new.token_hash,
        "ttl_s": float(new.ttl_s),
    }
    return await _SQL.inserted(conn, REFRESH_TOKENS, "insert_refresh_token", values)


def _signing_key(key: SigningKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "private_pem": key.private_pem,
        "public_pem": key.public_pem,
    }
