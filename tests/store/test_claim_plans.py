"""The fair claim reads the claim index (queue, kind, tenant_id, priority, run_at, id) on
both stores, for one tenant and for many: the tenants holding jobs of a kind are found by
a skip scan (one descent each), each tenant's share is a short walk of its range, and a
pile of queued jobs of a kind the worker lacks, at the head of its queue, is neither read
nor sorted by the claim, the next-due lookup or the handoff's check. Asserted on the plans
(EXPLAIN), which do not depend on the machine's speed."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from contract_support import W1, claim

from conveyor.store.fairness import TENANTS_PER_CLAIM
from conveyor.store.postgres import PostgresStore
from conveyor.store.postgres.connection import MAX_CACHED_STATEMENT
from conveyor.store.postgres.enqueue import _SQL as PG_ENQUEUE
from conveyor.store.postgres.exchange import _SQL as PG_EXCHANGE
from conveyor.store.sqlfile import Statement, load_statements
from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlite.queries import Q as SQLITE_Q
from pg_server import PgTestServer

PILE = 5000
"""Queued jobs of a kind nobody serves, ahead of the served ones (priority 1)."""
SERVED = 30
"""Queued jobs of kinds k0, k1 and k2 (priority 3), behind the pile."""
KINDS = ("k0", "k1", "k2")
SLOTS = 10
INDEX = "conveyor_jobs_claim_tenant"


@pytest.fixture(params=[1, 20], ids=["one-tenant", "20-tenants"])
def tenants(request: pytest.FixtureRequest) -> int:
    """How many tenants the jobs (the pile's and the served ones) are spread over."""
    n: int = request.param
    return n


def _row(g: int, tenants: int) -> tuple[str, str, int]:
    """Job ``g``'s tenant, kind and priority."""
    tenant = f"t{g % tenants:02d}"
    return (tenant, "nobody.runs", 1) if g <= PILE else (tenant, f"k{g % 3}", 3)


def _rows(tenants: int) -> list[tuple[str, str, int]]:
    return [_row(g, tenants) for g in range(1, PILE + SERVED + 1)]


def _first_served(tenants: int) -> list[int]:
    """The ids a fair claim of SLOTS takes: with one tenant the first SLOTS served jobs;
    with as many tenants as slots or more, the first job of each of the first SLOTS
    tenants (at equal passes, in tenant id order)."""
    served = range(PILE + 1, PILE + SERVED + 1)
    if tenants == 1:
        return list(served)[:SLOTS]
    first: dict[str, int] = {}
    for g in served:
        first.setdefault(_row(g, tenants)[0], g)
    return sorted(first[t] for t in sorted(first)[:SLOTS])


# -- SQLite ----------------------------------------------------------------------------------
@pytest.fixture
async def sqlite_path(tmp_path: Path, tenants: int) -> Path:
    path = tmp_path / "jobs.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.migrate()
    await store.close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
        "max_attempts, run_at, created_at) "
        "VALUES (?, 'default', ?, ?, 'queued', '{}', 3, 0, 0)",
        _rows(tenants),
    )
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def sqlite_db(sqlite_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(sqlite_path)
    yield conn
    conn.close()


def _sqlite_plan(conn: sqlite3.Connection, query: str, **params: Any) -> list[str]:
    statement = SQLITE_Q[query]
    rows = conn.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.args(params)).fetchall()
    return [detail for _, _, _, detail in rows]


SQLITE_PARAMS = {
    "worker_id": "w",
    "now": 1.0,
    "lease_s": 30.0,
    "queue": "default",
    "kinds": orjson.dumps(KINDS).decode(),
    "kind": "k0",
    "tenant_id": "t00",
    "limit": SLOTS,
    "after_priority": 0,
    "after_run_at": 0.0,
    "after_id": 0,
    "ids": orjson.dumps([PILE + 1, PILE + 2]).decode(),
}


def _no_scan(details: list[str]) -> None:
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details
    assert not any("TEMP B-TREE" in d for d in details), details


def test_sqlite_tenants_of_a_kind_are_a_skip_scan(sqlite_db: sqlite3.Connection) -> None:
    details = _sqlite_plan(sqlite_db, "queue_tenants", **SQLITE_PARAMS)
    assert any(f"{INDEX} (queue=? AND kind=?)" in d for d in details), details
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id>?)" in d for d in details), details
    _no_scan(details)


def test_sqlite_tenant_candidates_walk_the_tenants_range(sqlite_db: sqlite3.Connection) -> None:
    details = _sqlite_plan(sqlite_db, "tenant_candidates", **SQLITE_PARAMS)
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id=?" in d for d in details), details
    # The index's order is the claim order: no sort at all.
    _no_scan(details)


def test_sqlite_candidates_of_many_tenants_walk_each_range(
    sqlite_db: sqlite3.Connection,
) -> None:
    tenants = orjson.dumps([f"t{i:02d}" for i in range(20)]).decode()
    details = _sqlite_plan(sqlite_db, "tenants_candidates", **SQLITE_PARAMS, tenants=tenants)
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id=?" in d for d in details), details
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details


def test_sqlite_claim_updates_the_chosen_ids_by_key(sqlite_db: sqlite3.Connection) -> None:
    details = _sqlite_plan(sqlite_db, "claim", **SQLITE_PARAMS)
    assert any("USING INTEGER PRIMARY KEY (rowid=?)" in d for d in details), details
    _no_scan(details)


def test_sqlite_lone_claim_walks_the_tenants_range_and_looks_either_side(
    sqlite_db: sqlite3.Connection,
) -> None:
    details = _sqlite_plan(sqlite_db, "claim_lone", **SQLITE_PARAMS)
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id=?)" in d for d in details), details
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id<?)" in d for d in details), details
    assert any(f"{INDEX} (queue=? AND kind=? AND tenant_id>?)" in d for d in details), details
    assert any("USING INTEGER PRIMARY KEY (rowid=?)" in d for d in details), details
    # The only sort is of the few candidates of the kinds, merged in claim order.
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details


def test_sqlite_lone_claim_takes_the_tenants_first_jobs_only_while_it_is_alone(
    sqlite_db: sqlite3.Connection, tenants: int
) -> None:
    statement = SQLITE_Q["claim_lone"]
    rows = sqlite_db.execute(statement.sql, statement.args(SQLITE_PARAMS)).fetchall()
    ids = sorted(row[0] for row in rows)
    # Alone, the tenant's first SLOTS served jobs; beside other tenants, nothing.
    assert ids == (_first_served(1) if tenants == 1 else [])


async def test_sqlite_claim_takes_the_served_jobs_in_turn(sqlite_path: Path, tenants: int) -> None:
    store = SqliteStore(f"sqlite:///{sqlite_path}")
    await store.open()
    try:
        got = (await claim(store, W1, {"default": SLOTS}, kinds=KINDS)).claimed
    finally:
        await store.close()
    assert sorted(j.id for j in got) == _first_served(tenants)
    assert len({j.tenant_id for j in got}) == min(tenants, SLOTS)


def test_sqlite_next_run_at_reads_the_claimed_kinds_only(sqlite_db: sqlite3.Connection) -> None:
    details = _sqlite_plan(sqlite_db, "next_run_at", **SQLITE_PARAMS)
    assert any(f"{INDEX} (queue=? AND kind=?" in d for d in details), details
    assert not any(d.startswith("SCAN conveyor_jobs") for d in details), details


# -- PostgreSQL ------------------------------------------------------------------------------
_PG_FILL = (
    "INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, state, payload, "
    "max_attempts, run_at, created_at) "
    "SELECT t, 'default', k, p, 'queued', '{}', 3, now(), now() "
    "FROM unnest($1::text[], $2::text[], $3::int[]) AS s(t, k, p)"
)


@pytest.fixture
async def pg_db(pg: PgTestServer, tenants: int) -> AsyncIterator[asyncpg.Connection]:
    """The emptied test database, filled with the pile and the served jobs."""
    store = PostgresStore(pg.url)
    await store.open()
    await store.migrate()
    await store.close()
    # The stores' own session setting: their statements run with generic plans.
    conn = await asyncpg.connect(pg.url, server_settings={"plan_cache_mode": "force_generic_plan"})
    rows = _rows(tenants)
    await conn.execute(
        _PG_FILL, [t for t, _, _ in rows], [k for _, k, _ in rows], [p for _, _, p in rows]
    )
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


def _read(node: dict[str, Any]) -> int:
    rows: int = node.get("Actual Rows", 0) * node.get("Actual Loops", 0)
    return rows


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
        name = node["Index Name"]
        # By id (the claimed rows' update), a range of one (queue, kind), or a capped
        # tenant's running jobs (none here: it never runs).
        assert (
            name == "conveyor_jobs_pkey"
            or (name == INDEX and "kind = " in node["Index Cond"])
            or (name == "conveyor_jobs_running" and node["Actual Loops"] == 0)
        ), node
        if "Sort" in above:
            below_sort = above[len(above) - above[::-1].index("Sort") :]
            assert "Limit" in below_sort, above
    return [n for n, _ in scans]


def _claim(kinds: str) -> dict[str, str]:
    """The claim statement's parameters as SQL literals: SLOTS slots in queue default, no
    tenant's pass known yet."""
    return {
        "queues": "'{default}'",
        "slots": f"'{{{SLOTS}}}'",
        "vts": "'{0}'",
        "fair_queues": "'{}'",
        "fair_tenants": "'{}'",
        "fair_passes": "'{}'",
        "tenants_per_claim": str(TENANTS_PER_CLAIM),
        "discover": "true",
        "worker_id": "'w'",
        "lease_s": "30",
        "offer_key": "NULL",
        "kinds": kinds,
    }


async def test_postgres_claim_walks_each_tenants_range(
    pg_db: asyncpg.Connection, tenants: int
) -> None:
    plan = await _pg_plan(pg_db, PG_EXCHANGE["claim"], **_claim(kinds="'{k0,k1,k2}'"))
    scans = _assert_index_walks(plan)
    cond = [(n, n["Index Cond"]) for n in scans if n["Index Name"] == INDEX]
    # The skip scan: one row per (kind, tenant), each its own descent.
    skips = [n for n, c in cond if "tenant_id = " not in c and "run_at" not in c]
    assert skips, scans
    assert sum(_read(n) for n in skips) <= len(KINDS) * tenants
    # The walks: a range of one (queue, kind, tenant), each cut at the tenant's share.
    walks = [n for n, c in cond if "tenant_id = " in c and "ROW(" not in c]
    assert walks, scans
    share = math.ceil(SLOTS / tenants)
    assert sum(_read(n) for n in walks) <= min(SERVED, len(KINDS) * tenants * share)
    # However many tenants, the pile of nobody.runs is never read.
    assert sum(_read(n) for n in scans) < PILE / 10
    assert plan["Actual Rows"] == SLOTS + 1  # the claimed and the summary


async def test_postgres_claim_among_known_tenants_makes_no_skip_scan(
    pg_db: asyncpg.Connection, tenants: int
) -> None:
    """Between looks for a queue's tenants the claim walks those the caller knows: no
    descent of the claim index but the walks."""
    known = [f"t{i:02d}" for i in range(tenants)]
    literals = {
        **_claim(kinds="'{k0,k1,k2}'"),
        "discover": "false",
        "fair_queues": "'{" + ",".join(["default"] * tenants) + "}'",
        "fair_tenants": "'{" + ",".join(known) + "}'",
        "fair_passes": "'{" + ",".join(["0"] * tenants) + "}'",
    }
    plan = await _pg_plan(pg_db, PG_EXCHANGE["claim"], **literals)
    scans = _assert_index_walks(plan)
    ran = [(n, n["Index Cond"]) for n in scans if n["Index Name"] == INDEX and n["Actual Loops"]]
    assert ran
    assert all("tenant_id = " in c for _, c in ran), ran
    assert plan["Actual Rows"] == SLOTS + 1


async def test_postgres_claim_takes_the_served_jobs_in_turn(
    pg_db: asyncpg.Connection, pg: PgTestServer, tenants: int
) -> None:
    store = PostgresStore(pg.url)
    await store.open()
    try:
        got = (await claim(store, W1, {"default": SLOTS}, kinds=KINDS)).claimed
    finally:
        await store.close()
    assert sorted(j.id for j in got) == _first_served(tenants)
    assert len({j.tenant_id for j in got}) == min(tenants, SLOTS)


@pytest.mark.parametrize("known", ["NULL", "'t00'"], ids=["none-known", "t00-known"])
async def test_postgres_claim_of_a_lone_tenant_walks_only_when_alone(
    pg_db: asyncpg.Connection, tenants: int, known: str
) -> None:
    """The claim of a queue where the last claim found at most one tenant: a look either
    side of that tenant (or of the first one) for another, then, if none, the walks of its
    range; with other tenants it claims nothing (the store claims again, fairly)."""
    literals = {**_claim(kinds="'{k0,k1,k2}'"), "lone_tenants": f"ARRAY[{known}]::text[]"}
    plan = await _pg_plan(pg_db, PG_EXCHANGE["claim_lone"], **literals)
    scans = _assert_index_walks(plan)
    cond = [(n, n["Index Cond"]) for n in scans if n["Index Name"] == INDEX]
    walks = [n for n, c in cond if "tenant_id = " in c]
    looks = [n for n, c in cond if "tenant_id = " not in c]
    # At most one tenant found per kind, and a descent either side of it.
    assert sum(_read(n) for n in looks) <= 3 * len(KINDS)
    if tenants == 1:
        assert sum(_read(n) for n in walks) <= len(KINDS) * SLOTS
        assert plan["Actual Rows"] == SLOTS + 1
    else:
        assert walks
        assert all(n["Actual Loops"] == 0 for n in walks), walks
        assert plan["Actual Rows"] == 1  # the summary alone
    assert sum(_read(n) for n in scans) < PILE / 10


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
            tenant_id="'t00'",
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
            events="true",
        )
    finally:
        await holder.close()
    scans = _assert_index_walks(plan)
    assert sum(n.get("Actual Rows", 0) for n in scans) == 0
    assert plan["Actual Rows"] == 1


def test_every_postgres_statement_stays_prepared() -> None:
    """asyncpg prepares anew, at every call, a statement longer than its cache takes:
    every statement of the store's .sql files (the exchange is the longest) must fit, or
    it is planned again each time it runs."""
    package = "conveyor.store.postgres"
    files = [f.name for f in resources.files(package).iterdir() if f.name.endswith(".sql")]
    assert "exchange.sql" in files
    for filename in files:
        for name, stmt in load_statements(package, "$", filename).items():
            assert len(stmt.sql) <= MAX_CACHED_STATEMENT, (filename, name, len(stmt.sql))
