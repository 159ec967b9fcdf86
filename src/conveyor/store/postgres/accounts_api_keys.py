"""API keys on PostgreSQL: a tenant's keys for server-to-server callers, stored hashed
and found by their visible prefix. A key is found and touched before its tenant is known
(:data:`NO_TENANT`, through functions of migration 0011; found in one statement that takes
the API's role itself, migration 0012); the other verbs run in the scope of the tenant
they name, or an operator's for every tenant (``tenant_id`` None)."""

from __future__ import annotations

import orjson

from conveyor.store.accounts import ApiKey, NewApiKey
from conveyor.store.base import ConflictError, DataRejected
from conveyor.store.coalesce import Coalescer
from conveyor.store.columns import Column, Table, tuple_from_json
from conveyor.store.postgres.accounts_statements import NO_TENANT, AccountStatements, timestamp
from conveyor.store.postgres.connection import OPERATOR, Database, Scope
from conveyor.store.postgres.rows import time_or_none

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
        Column("created_at", timestamp),
        Column("last_used_at", time_or_none),
        Column("expires_at", time_or_none),
        Column("revoked_at", time_or_none),
    ),
)
_SQL = AccountStatements("accounts_api_keys.sql", {"api_key_columns": API_KEYS})


class PostgresApiKeys:
    """API keys: part of ``PostgresStore``'s accounts."""

    _db: Database
    _key_lookups: Coalescer[str, ApiKey | None]
    """Made by the store with :meth:`_find_api_keys`, closed with it."""

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
                lambda conn: _SQL.inserted(conn, API_KEYS, "insert_api_key", values),
                Scope(new.tenant_id),
            )
        except ConflictError as exc:
            raise ConflictError(f"API key id {new.id!r} or prefix {new.prefix!r} is taken") from exc
        except DataRejected as exc:
            raise DataRejected(f"tenant {new.tenant_id!r} does not exist: {exc}") from exc

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        # Every call with a key reads it, so that a revoked key is refused at its next call
        # in every process. The calls that arrive while a look-up is in flight go together
        # in the next one (most carry the same key): each statement starts after all of
        # its callers arrived, so it sees every revocation committed before any of them.
        return await self._key_lookups(prefix)

    async def _find_api_keys(self, prefixes: list[str]) -> list[ApiKey | None]:
        """The keys of ``prefixes`` (None where there is none), in one statement: one round
        trip, where :data:`NO_TENANT`'s transaction took four."""
        values: dict[str, object] = {"prefixes": list(dict.fromkeys(prefixes))}
        name = "find_api_keys"
        if self._db.role is not None:
            name, values["role"] = "find_api_keys_as_role", self._db.role
        found = await self._db.run(lambda conn: _SQL.all(conn, API_KEYS, name, values))
        by_prefix = {key.prefix: key for key in found}
        return [by_prefix.get(prefix) for prefix in prefixes]

    async def touch_api_key(self, key_id: str) -> None:
        await self._db.run(
            lambda conn: _SQL.count(conn, "touch_api_key", {"key_id": key_id}), NO_TENANT
        )

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        if tenant_id is None:
            return await self._db.run(
                lambda conn: _SQL.all(conn, API_KEYS, "list_all_api_keys", {}), OPERATOR
            )
        return await self._db.run(
            lambda conn: _SQL.all(conn, API_KEYS, "list_api_keys", {"tenant_id": tenant_id}),
            Scope(tenant_id),
        )

    async def revoke_api_key(self, key_id: str, tenant_id: str | None) -> bool:
        values = {"key_id": key_id, "tenant_id": tenant_id}
        return bool(
            await self._db.run(
                lambda conn: _SQL.changed(conn, "revoke_api_key", values), Scope(tenant_id)
            )
        )
