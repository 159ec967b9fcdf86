"""SQLite: migrations through the shared runner, and a database newer than the code refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor.store.base import StoreError
from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlite.migrations import MIGRATOR


async def test_migrating_twice_applies_each_version_once(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    try:
        assert await store.schema_status() == (0, MIGRATOR.latest)
        assert await store.migrate() == list(range(1, MIGRATOR.latest + 1))
        assert await store.migrate() == []
        assert await store.schema_status() == (MIGRATOR.latest, MIGRATOR.latest)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    versions = [v for (v,) in conn.execute("SELECT version FROM conveyor_schema ORDER BY 1")]
    assert versions == list(range(1, MIGRATOR.latest + 1))


async def test_a_database_a_newer_release_migrated_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await store.open()
    try:
        await store.migrate()
        with sqlite3.connect(tmp_path / "t.db") as conn:
            conn.execute("INSERT INTO conveyor_schema VALUES (?, 0)", (MIGRATOR.latest + 1,))
        with pytest.raises(StoreError, match=rf"schema version {MIGRATOR.latest + 1}, newer"):
            await store.migrate()
        assert await store.schema_status() == (MIGRATOR.latest + 1, MIGRATOR.latest)
    finally:
        await store.close()
