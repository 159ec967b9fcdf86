"""SQLite: "database is locked" answered without waiting is retried, within the busy
timeout, instead of failing the call (two processes starting on a new file met it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor.store.base import StoreError
from conveyor.store.sqlite import SqliteStore


async def test_a_locked_answer_is_retried(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'jobs.db'}", busy_timeout_ms=2_000)
    await store.open()
    try:
        calls = 0

        def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise sqlite3.OperationalError("database is locked")
            return "done"

        assert await store._db.call(flaky) == "done"
        assert calls == 3
    finally:
        await store.close()


async def test_a_lock_that_outlasts_the_busy_timeout_fails(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'jobs.db'}", busy_timeout_ms=100)
    await store.open()
    try:

        def locked() -> None:
            raise sqlite3.OperationalError("database is locked")

        with pytest.raises(StoreError, match="database is locked"):
            await store._db.call(locked)
    finally:
        await store.close()


async def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    try:
        calls = 0

        def broken() -> None:
            nonlocal calls
            calls += 1
            raise sqlite3.OperationalError("no such table: nowhere")

        with pytest.raises(StoreError, match="no such table"):
            await store._db.call(broken)
        assert calls == 1
    finally:
        await store.close()
