"""SQLite: the statistics read finished jobs off an index, and an enqueue maintains only the
indexes a queued job belongs in (the statistics index is partial: finished jobs only)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlite.queries import Q

PARAMS = {"since": 0.0, "now": 0.0, "queue": "default"}
TENANTS = [pytest.param(None, id="all-tenants"), pytest.param("acme", id="one-tenant")]


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "jobs.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.migrate()
    await store.close()
    return sqlite3.connect(path)


@pytest.mark.parametrize("tenant_id", TENANTS)
@pytest.mark.parametrize("query", ["stats_finished", "stats_recent", "stats_run_times"])
def test_finished_job_statistics_read_an_index(
    sqlite_db: sqlite3.Connection, query: str, tenant_id: str | None
) -> None:
    statement = Q[query]
    args = statement.args({**PARAMS, "tenant_id": tenant_id})
    plan = [row[3] for row in sqlite_db.execute(f"EXPLAIN QUERY PLAN {statement.sql}", args)]
    assert plan, query
    assert all("INDEX" in step for step in plan if "conveyor_jobs" in step), plan


def test_the_statistics_index_holds_finished_jobs_only(sqlite_db: sqlite3.Connection) -> None:
    (sql,) = sqlite_db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'conveyor_jobs_stats'"
    ).fetchone()
    assert sql.endswith("WHERE finished_at IS NOT NULL")
