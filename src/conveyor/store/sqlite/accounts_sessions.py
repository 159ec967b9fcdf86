"""Sessions on SQLite: refresh tokens (stored hashed, rotated within a family, a reused
one revoking its family) and the keys that sign access tokens (at most one active). Each
verb that writes holds the write lock from its first statement (``BEGIN IMMEDIATE``), so
a token already rotated or an active key cannot be raced by another process."""

from __future__ import annotations

import sqlite3
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
from conveyor.store.sqlite.accounts_statements import AccountStatements
from conveyor.store.sqlite.connection import Database

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
SIGNING_KEYS: Table[SigningKey] = Table(
    SigningKey,
    tuple(
        Column(name)
        for name in ("kid", "algorithm", "private_pem", "public_pem", "created_at", "retired_at")
    ),
)
_SQL = AccountStatements(
    "accounts_sessions.sql",
    {"refresh_token_columns": REFRESH_TOKENS, "signing_key_columns": SIGNING_KEYS},
)


class SqliteSessions:
    """Refresh tokens and signing keys: part of ``SqliteStore``'s accounts."""

    _db: Database

    # -- refresh tokens --------------------------------------------------------------
    async def add_refresh_token(self, new: NewRefreshToken) -> RefreshToken:
        return await self._db.write(lambda conn, now: _insert_refresh_token(conn, now, new))

    async def rotate_refresh_token(self, token_hash: str, new: NewRefreshToken) -> Rotation:
        def tx(conn: sqlite3.Connection, now: float) -> Rotation:
            old = _SQL.one(conn, REFRESH_TOKENS, "find_refresh_token", {"token_hash": token_hash})
            if old is None:
                return Rotation(RotateOutcome.UNKNOWN, None)
            if old.revoked_at is not None:
                return Rotation(RotateOutcome.REVOKED, old)
            if old.expires_at <= now:
                return Rotation(RotateOutcome.EXPIRED, old)
            if old.rotated_at is not None:
                _SQL.run(conn, "revoke_refresh_family", {"family_id": old.family_id, "now": now})
                return Rotation(RotateOutcome.REUSED, old)
            _SQL.run(conn, "mark_rotated", {"id": old.id, "now": now})
            successor = NewRefreshToken(
                new.id, old.family_id, old.user_id, old.tenant_id, new.token_hash, new.ttl_s
            )
            _insert_refresh_token(conn, now, successor)
            return Rotation(RotateOutcome.ROTATED, old)

        return await self._db.write(tx)

    async def revoke_refresh_family(self, family_id: str) -> int:
        return await self._db.write(
            lambda conn, now: _SQL.changed(
                conn, "revoke_refresh_family", {"family_id": family_id, "now": now}
            )
        )

    async def revoke_refresh_token(self, token_hash: str) -> bool:
        def tx(conn: sqlite3.Connection, now: float) -> bool:
            found = _SQL.one(conn, REFRESH_TOKENS, "find_refresh_token", {"token_hash": token_hash})
            if found is None:
                return False
            _SQL.run(conn, "revoke_refresh_family", {"family_id": found.family_id, "now": now})
            return True

        return await self._db.write(tx)

    async def revoke_user_tokens(self, user_id: str, tenant_id: str | None = None) -> int:
        values = {"user_id": user_id, "tenant_id": tenant_id}
        return await self._db.write(
            lambda conn, now: _SQL.changed(conn, "revoke_user_tokens", {**values, "now": now})
        )

    # -- signing keys ----------------------------------------------------------------
    async def signing_keys(self) -> list[SigningKey]:
        return await self._db.read(
            lambda conn, now: _SQL.all(conn, SIGNING_KEYS, "signing_keys", {})
        )

    async def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        def tx(conn: sqlite3.Connection, now: float) -> list[SigningKey]:
            _SQL.run(conn, "insert_first_signing_key", _signing_key(candidate, now))
            return _SQL.all(conn, SIGNING_KEYS, "signing_keys", {})

        return await self._db.write(tx)

    async def add_signing_key(self, key: SigningKey) -> list[SigningKey]:
        def tx(conn: sqlite3.Connection, now: float) -> list[SigningKey]:
            _SQL.run(conn, "retire_active_signing_keys", {"now": now})
            _SQL.run(conn, "insert_signing_key", _signing_key(key, now))
            return _SQL.all(conn, SIGNING_KEYS, "signing_keys", {})

        try:
            return await self._db.write(tx)
        except ConflictError as exc:
            raise ConflictError(f"signing key id {key.kid!r} is taken") from exc

    async def retire_signing_key(self, kid: str) -> bool:
        return bool(
            await self._db.write(
                lambda conn, now: _SQL.changed(conn, "retire_signing_key", {"kid": kid, "now": now})
            )
        )


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
    return _SQL.inserted(conn, REFRESH_TOKENS, "insert_refresh_token", values)


def _signing_key(key: SigningKey, now: float) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "private_pem": key.private_pem,
        "public_pem": key.public_pem,
        "now": now,
    }
