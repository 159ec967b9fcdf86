"""Storage layer: the :class:`Store` contract and its implementations."""

from __future__ import annotations

from conveyor.config import Settings
from conveyor.store.base import (
    CancelRequested,
    ConflictError,
    DataRejected,
    JobQueue,
    JobsAvailable,
    Listener,
    Notice,
    RequestStore,
    Store,
    StoreError,
    TransactionRolledBack,
)


def make_store(settings: Settings, *, api: bool = False) -> Store:
    """The store ``settings.database_url`` names, not yet opened. ``api``: the API's store,
    whose calls for a tenant act as ``settings.database_role`` on PostgreSQL (SQLite
    scopes them in its statements alone)."""
    url = settings.database_url
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from conveyor.store.sqlite import SqliteStore

        return SqliteStore(
            url,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            poll_interval=settings.sqlite_poll_interval,
            events=settings.events,
        )
    if scheme in ("postgresql", "postgres"):
        from conveyor.store.postgres import PostgresStore

        return PostgresStore(
            url,
            listen=settings.listen,
            pool_size=settings.pool_size,
            role=settings.database_role if api else "none",
            events=settings.events,
        )
    raise StoreError(
        f"CONVEYOR_DATABASE_URL={url!r}: unsupported scheme {scheme!r}; "
        "use sqlite:///path/to/file.db or postgresql://user@host/database"
    )


__all__ = [
    "CancelRequested",
    "ConflictError",
    "DataRejected",
    "JobQueue",
    "JobsAvailable",
    "Listener",
    "Notice",
    "RequestStore",
    "Store",
    "StoreError",
    "TransactionRolledBack",
    "make_store",
]
