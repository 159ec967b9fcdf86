"""The claim by kind reads the claim index, one short walk per (queue, kind), on both
stores: a pile of queued jobs of a kind the worker lacks, at the head of its queue, is
neither read nor sorted by the claim, the next-due lookup or the handoff's check. Asserted
on the plans (EXPLAIN), which do not depend on the machine's speed."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from conveyor.store.postgres import PostgresStore
from conveyor.store.postgres.enqueue import _SQL as PG_ENQUEUE
from conveyor.store.postgres.exchange import _SQL as PG_EXCHANGE
from conveyor.store.sqlfile import Statement
from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlite.queries import Q as SQLITE_Q
from pg_server import PgTestServer

PILE = 5000
"""Queued jobs of a kind nobody serves, ahead of the served ones (priority 1)."""
SERVED = 30
"""Queued jobs of kinds k0, k1 and k2 (priority 3), behind the pile."""


def _kind_and_priority(g: int) -> tuple[str, int]:
    return ("nobody.runs", 1) if g <= PILE else (f"k{g % 3}", 3)


# -- SQLite ----------------------------------------------------------------------------------
@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[sqlite3.Connection]:
    path = tmp_path / "jobs.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.migrate()
    await store.close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
        "max_attempts, run_at, created_at) "
        "VALUES ('default', 'default', ?, ?, 'queued', '{}', 3, 0, 0)",
        [_kind_and_priority(g) for g in range(1, PILE + SERVED + 1)],
    )
    conn.execute("ANALYZE")
    conn.commit()
    yield conn
    conn.close()


def _sqlite_plan(conn: sqlite3.Connection, query: str, **params: Any) -> list[tuple[int, int, str]]:
    statement = SQLITE_Q[query]
    rows = conn.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.args(params)).fetchall()
    return [(node_id, parent, detail) for node_id, parent, _, detail in rows]


SQLITE_PARAMS = {
    "worker_id": "w",
    "now": 1.0,
    "lease_s": 30.0,
    "queue": "default",
    "kinds": orjson.dumps(["k0", "k1", "k2"]).decode(),
    "limit": 10,
}


def test_sqlite_claim_walks_the_index_per_kind(sqlite_db: sqlite3.Connection) -> None:
    plan = _sqlite_plan(sqlite_db, "claim", **SQLITE_PARAMS)
    details = [d for _, _, d in plan]
    assert any("conveyor_jobs_claim_kind (queue=? AND kind=?" in d for d in details), details
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details
    # The one sort is the merge of the candidates (at most n per kind), outside the
    # correlated walk: never a sort of the queue.
    walk = next(node for node, _, d in plan if d.startswith("CORRELATED LIST SUBQUERY"))
    sorts = [(node, parent) for node, parent, d in plan if "TEMP B-TREE" in d]
    assert all(not _under(plan, node, walk) for node, _ in sorts), plan

    claim = SQLITE_Q["claim"]
    claimed = sqlite_db.execute(claim.sql, claim.args(SQLITE_PARAMS)).fetchall()
    # The first ten served jobs in claim order: ids right after the pile's.
    assert sorted(row[0] for row in claimed) == list(range(PILE + 1, PILE + 11))


def test_sqlite_next_run_at_reads_the_claimed_kinds_only(sqlite_db: sqlite3.Connection) -> None:
    details = [d for _, _, d in _sqlite_plan(sqlite_db, "next_run_at", **SQLITE_PARAMS)]
    assert any("conveyor_jobs_claim_kind (queue=? AND kind=?" in d for d in details), details
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details


def _under(plan: list[tuple[int, int, str]], node: int, ancestor: int) -> bool:
    parents = {n: p for n, p, _ in plan}
    while node in parents:
        node = parents[node]
        if node == ancestor:
            return True
    return False


# -- PostgreSQL ------------------------------------------------------------------------------
_PG_FILL = (
    "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
    "max_attempts, run_at, created_at) "
    "SELECT 'default', 'default', k, p, 'queued', '{}', 3, now(), now() "
    "FROM unnest($1::text[], $2::int[]) AS s(k, p)"
)


@pytest.fixture
async def pg_db(pg: PgTestServer) -> AsyncIterator[asyncpg.Connection]:
    """The emptied test database, filled with the pile and the served jobs."""
    store = PostgresStore(pg.url)
    await store.open()
    await store.migrate()
    await store.close()
    # The stores' own session setting: their statements run with generic plans.
    conn = await asyncpg.connect(pg.url, server_settings={"plan_cache_mode": "force_generic_plan"})
    rows = [_kind_and_priority(g) for g in range(1, PILE + SERVED + 1)]
    await conn.execute(_PG_FILL, [k for k, _ in rows], [p for _, p in rows])
    await conn.execute("ANALYZE conveyor_jobs")
    try:
        yield conn
    finally:
        await conn.close()


async def _pg_plan(conn: asyncpg.Connection, stmt: Statement, **literals: str) -> dict[str, Any]:
    """The generic plan of ``stmt`` run (in a transaction rolled back) with its parameters
    given as SQL ``literals``, by name."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"PREPARE planned AS {stmt.sql}")
        doc = await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE planned({', '.join(stmt.args(literals))})"
        )
    finally:
        await tx.rollback()
    plan: dict[str, Any] = orjson.loads(doc)[0]["Plan"]
    return plan


def _nodes(
    node: dict[str, Any], above: tuple[str, ...] = ()
) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """Every node with the types of the nodes above it."""
    yield node, above
    for child in node.get("Plans", []):
        yield from _nodes(child, (*above, node["Node Type"]))


def _assert_index_walks(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every read of conveyor_jobs goes through an index, and every one that ends in a sort
    is cut by a LIMIT first: the sort holds candidates, never the queue."""
    scans = [
        (n, above)
        for n, above in _nodes(plan)
        if n.get("Relation Name") == "conveyor_jobs" and n["Node Type"] != "ModifyTable"
    ]
    assert scans
    for node, above in scans:
        assert node["Node Type"] in ("Index Scan", "Index Only Scan"), node
        # By id (the claimed rows' update), or a range of one (queue, kind).
        assert node["Index Name"] == "conveyor_jobs_pkey" or (
            node["Index Name"] == "conveyor_jobs_claim_kind" and "kind = " in node["Index Cond"]
        ), node
        if "Sort" in above:
            below_sort = above[len(above) - above[::-1].index("Sort") :]
            assert "Limit" in below_sort, above
    return [n for n, _ in scans]


def _claim(kinds: str) -> dict[str, str]:
    """The claim statement's parameters as SQL literals: ten slots in queue default."""
    return {
        "queues": "'{default}'",
        "slots": "'{10}'",
        "worker_id": "'w'",
        "lease_s": "30",
        "offer_key": "NULL",
        "kinds": kinds,
    }


async def test_postgres_claim_walks_the_index_per_kind(pg_db: asyncpg.Connection) -> None:
    plan = await _pg_plan(pg_db, PG_EXCHANGE["claim"], **_claim(kinds="'{k0,k1,k2}'"))
    scans = _assert_index_walks(plan)
    walks = [n for n in scans if "kind = wk.kind" in n.get("Index Cond", "")]
    assert walks, scans
    assert all(n["Index Name"] == "conveyor_jobs_claim_kind" for n in walks)
    # Three kinds, each walk stops at its limit: the pile of nobody.runs is never read.
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in walks) <= 30
    assert plan["Actual Rows"] == 11  # ten claimed and the summary


async def test_postgres_next_run_at_reads_the_claimed_kinds_only(pg_db: asyncpg.Connection) -> None:
    """A claim that comes back short looks up the next due time; it must not read the
    pile either (here every job is due, so the claim of k9 gets nothing)."""
    plan = await _pg_plan(pg_db, PG_EXCHANGE["claim"], **_claim(kinds="'{k9}'"))
    scans = _assert_index_walks(plan)
    assert sum(n.get("Actual Rows", 0) for n in scans) == 0
    assert plan["Actual Rows"] == 1  # the summary alone


async def test_postgres_handoff_check_skips_unserved_kinds(
    pg_db: asyncpg.Connection, pg: PgTestServer
) -> None:
    """An enqueue of k9 with a live offer that serves k9: the check for a due queued job
    of the offer's kinds reads none of the pile, and the job is handed off."""
    key = 4242
    holder = await asyncpg.connect(pg.url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        await pg_db.execute(
            "INSERT INTO conveyor_offers (queue, worker_id, slots, lock_key, lease_s, kinds) "
            "VALUES ('default', 'w', 5, $1, 30, '{k9}')",
            key,
        )
        plan = await _pg_plan(
            pg_db,
            PG_ENQUEUE["insert_job"],
            tenant_id="'default'",
            queue="'default'",
            kind="'k9'",
            priority="3",
            payload="'{}'",
            max_attempts="3",
            run_at="NULL",
            delay_s="0",
            timeout_s="NULL",
            unique_key="NULL",
            meta="'{}'",
            channel="'test'",
        )
    finally:
        await holder.close()
    scans = _assert_index_walks(plan)
    assert sum(n.get("Actual Rows", 0) for n in scans) == 0
    assert plan["Actual Rows"] == 1
