"""API keys on SQLite: a tenant's keys for server-to-server callers, stored hashed and
found by their visible prefix."""

from __future__ import annotations

import orjson

from conveyor.store.accounts import ApiKey, NewApiKey
from conveyor.store.base import ConflictError, DataRejected
from conveyor.store.columns import Column, Table, tuple_from_json
from conveyor.store.sqlite.accounts_statements import AccountStatements
from conveyor.store.sqlite.connection import Database

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
_SQL = AccountStatements("accounts_api_keys.sql", {"api_key_columns": API_KEYS})


class SqliteApiKeys:
    """API keys: part of ``SqliteStore``'s accounts."""

    _db: Database

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
                lambda conn, now: _SQL.inserted(
                    conn, API_KEYS, "insert_api_key", {**values, "now": now}
                )
            )
        except ConflictError as exc:
            raise ConflictError(f"API key id {new.id!r} or prefix {new.prefix!r} is taken") from exc
        except DataRejected as exc:
            raise DataRejected(f"tenant {new.tenant_id!r} does not exist: {exc}") from exc

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        # Read at every call with a key (a revoked key is refused at once): one statement.
        return await self._db.read_statement(
            lambda conn, now: _SQL.one(conn, API_KEYS, "find_api_key", {"prefix": prefix})
        )

    async def touch_api_key(self, key_id: str) -> None:
        await self._db.write(
            lambda conn, now: _SQL.run(conn, "touch_api_key", {"key_id": key_id, "now": now})
        )

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        if tenant_id is None:
            return await self._db.read(
                lambda conn, now: _SQL.all(conn, API_KEYS, "list_all_api_keys", {})
            )
        return await self._db.read(
            lambda conn, now: _SQL.all(conn, API_KEYS, "list_api_keys", {"tenant_id": tenant_id})
        )

    async def revoke_api_key(self, key_id: str, tenant_id: str | None) -> bool:
        values = {"key_id": key_id, "tenant_id": tenant_id}
        return bool(
            await self._db.write(
                lambda conn, now: _SQL.changed(conn, "revoke_api_key", {**values, "now": now})
            )
        )
