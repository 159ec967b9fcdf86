"""The PostgreSQL store (see :mod:`conveyor.store.postgres.store`)."""

from __future__ import annotations

from conveyor.store.postgres.listener import CHANNEL
from conveyor.store.postgres.store import PostgresStore

__all__ = ["CHANNEL", "PostgresStore"]
