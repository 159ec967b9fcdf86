"""Idle worker: RSS of a ``conveyor worker`` subprocess after it has idled, and (PostgreSQL)
the statements it sends the server while idle.

The worker serves the no-op queue with default settings and the bench kinds imported; it
counts as started once it has registered in the database. On PostgreSQL it first idles
``idle_settle_seconds`` (start-up statements out of the way, and out of the server's
statistics), then the window of ``idle_seconds`` opens. At the end of the window psutil
reads its RSS and USS; the CPU it used in the window is reported too.

Statements while idle (PostgreSQL), two readings of the window:

- *statements seen*: an admin connection (to the admin database, so it is not counted)
  samples ``pg_stat_activity`` for the bench database every 10 ms and counts the distinct
  ``(pid, query_start)`` pairs that started in the window: one per statement any backend
  of the bench database began (the worker's pool and its LISTEN connection; the bench's
  own client connection is open but idle). Two statements that start on one connection
  within 10 ms of each other count as one, so the second reading backs it up:
- *transactions*: the change of ``xact_commit + xact_rollback`` in ``pg_stat_database``
  for the bench database over the window. A backend reports these at most once a second
  and an idle one within 10 s, which is why the window opens only after the settle delay.

``pg_stat_statements`` would count exactly, but it must be preloaded at server start,
which the bench does not assume.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
import psutil

from bench import kinds
from bench.common import running_worker
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import PostgresBackend, StoreConfig
from conveyor import Client

MIB = 1024 * 1024
SAMPLE_S = 0.01
REFERENCE = Goal(
    "<=", 80.0, "DESIGN.md: an idle worker holds <= 80 MB RSS (read as MiB)", binding=False
)
PG_RSS = Goal("<=", 80.0, "DESIGN.md: an idle worker holds <= 80 MB RSS (read as MiB)")
PG_STATEMENTS = Goal(
    "<=",
    3.0,
    "issue 3: an idle worker sends at most 3 queries in 10 s (DESIGN.md: no query per second)",
)


async def idle_worker(store: StoreConfig, url: str, opts: Options) -> tuple[dict[str, float], str]:
    """The figures of one run, and what the worker's statements were (PostgreSQL)."""
    backend = store.backend
    client = await Client.connect(store.settings(url))
    seen = ""
    async with client, running_worker(store, url, client, kinds.NOOP_QUEUE) as proc:
        process = psutil.Process(proc.pid)
        if isinstance(backend, PostgresBackend):
            await asyncio.sleep(opts.idle_settle_seconds)
        cpu0 = sum(process.cpu_times()[:2])
        t0 = time.monotonic()
        result: dict[str, float] = {}
        if isinstance(backend, PostgresBackend):
            database = urlsplit(url).path.lstrip("/")
            result, seen = await count_statements(backend.admin_url, database, opts.idle_seconds)
        else:
            await asyncio.sleep(opts.idle_seconds)
        memory = process.memory_full_info()
        cpu = sum(process.cpu_times()[:2]) - cpu0
        elapsed = time.monotonic() - t0
    return {
        "rss_mb": memory.rss / MIB,
        "uss_mb": memory.uss / MIB,
        "idle_cpu_pct": 100 * cpu / elapsed,
        **result,
    }, seen


async def count_statements(
    admin_url: str, database: str, seconds: float
) -> tuple[dict[str, float], str]:
    """Statements and transactions of ``database`` during ``seconds`` from now."""
    conn = await asyncpg.connect(admin_url)
    try:
        xacts = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"
        start: datetime = await conn.fetchval("SELECT clock_timestamp()")
        x0 = int(await conn.fetchval(xacts, database))
        statements: dict[tuple[int, datetime], str] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT pid, query_start, query FROM pg_stat_activity "
                "WHERE datname = $1 AND query_start > $2",
                database,
                start,
            )
            for pid, query_start, query in rows:
                statements.setdefault((pid, query_start), _first_words(str(query)))
            await asyncio.sleep(SAMPLE_S)
        x1 = int(await conn.fetchval(xacts, database))
    finally:
        await conn.close()
    per_10s = 10.0 / seconds
    texts = Counter(statements.values())
    seen = "; ".join(f"{n} x {text}" for text, n in texts.most_common()) or "none"
    return {
        "statements_10s": len(statements) * per_10s,
        "transactions_10s": (x1 - x0) * per_10s,
    }, seen


def _first_words(query: str) -> str:
    """The start of a statement for the report: its first line of SQL, or its first
    comment line if the server kept only comments (it keeps the first
    ``track_activity_query_size`` bytes, 1 KiB by default)."""
    lines = [line.strip() for line in query.splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith("--")]
    return " ".join((code or lines or ["?"])[0].split())[:60]


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    out: list[Case] = []
    for store in stores:
        if not store.default:
            continue
        postgres = isinstance(store.backend, PostgresBackend)
        metrics = [
            Metric("rss_mb", "RSS", "MiB", PG_RSS if postgres else REFERENCE),
            Metric("uss_mb", "USS (memory unique to it)", "MiB"),
            Metric("idle_cpu_pct", "CPU while idle", "%"),
        ]
        settings: dict[str, object] = {"idle_s": opts.idle_seconds, "concurrency": 10}
        if postgres:
            settings["settle_s"] = opts.idle_settle_seconds
            metrics += [
                Metric("statements_10s", "statements seen, per 10 s", "stmts", PG_STATEMENTS),
                Metric("transactions_10s", "transactions (pg_stat_database), per 10 s", "xacts"),
            ]
        row = Row(
            bench="idle worker" if postgres else "idle worker memory (informational)",
            title="conveyor worker subprocess, idle",
            store=store.label,
            settings=settings,
            metrics=metrics,
        )

        async def measure(s: StoreConfig = store, r: Row = row) -> dict[str, float]:
            async with s.fresh_database() as url:
                result, seen = await idle_worker(s, url, opts)
            if seen:
                r.note = f"statements seen in the last run: {seen}"
            return result

        out.append(Case(row, measure, opts.rss_runs))
    return out
