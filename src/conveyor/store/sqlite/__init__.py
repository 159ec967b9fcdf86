"""The embedded store: one SQLite file in WAL mode (see :mod:`.store`)."""

from __future__ import annotations

from conveyor.store.sqlite.connection import sqlite_path
from conveyor.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore", "sqlite_path"]
