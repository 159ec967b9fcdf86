"""Queues on PostgreSQL: their settings (pause, cluster-wide limit) and statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from conveyor.store.base import JobsAvailable, Notice
from conveyor.store.postgres.connection import OPERATOR, Conn, Database, Scope
from conveyor.store.postgres.exchange import Limits
from conveyor.store.postgres.listener import notify_limit, notify_queues
from conveyor.store.postgres.workers import read_workers
from conveyor.store.records import QueueStats, WorkerInfo
from conveyor.store.sqlfile import load_statements
from conveyor.store.stats import FINISHED_WINDOW_S, assemble_queue_stats

_SQL = load_statements(__package__, "$", "queues.sql")


class Queues:
    """Pauses and limits queues, telling every store's workers, and reads their health."""

    def __init__(self, db: Database, publish: Callable[[Notice], None], limits: Limits) -> None:
        self._db = db
        self._publish = publish
        self._limits = limits

    async def set_paused(self, queue: str, paused: bool) -> bool:
        async def tx(conn: Conn) -> bool:
            if not await _exists(conn, queue):
                return False
            stmt = _SQL["set_paused"]
            await conn.execute(stmt.sql, *stmt.args({"queue": queue, "paused": paused}))
            if paused:
                await _drop_offers(conn, queue)
            else:
                await notify_queues(conn, [queue])
            return True

        # An operator's verb: whether the queue exists reads every tenant's jobs.
        if not await self._db.transact(tx, OPERATOR):
            return False
        if not paused:
            self._publish(JobsAvailable(frozenset({queue})))
        return True

    async def set_limit(self, queue: str, limit: int | None) -> bool:
        async def tx(conn: Conn) -> bool:
            if not await _exists(conn, queue):
                return False
            stmt = _SQL["set_limit"]
            await conn.execute(stmt.sql, *stmt.args({"queue": queue, "limit": limit}))
            if limit is not None:
                await _drop_offers(conn, queue)
            # 'l:' tells every store to reload its limits; 'q:' wakes the workers.
            await notify_limit(conn, queue)
            await notify_queues(conn, [queue])
            return True

        if not await self._db.transact(tx, OPERATOR):
            return False
        if limit is None:
            self._limits.queues.discard(queue)
        else:
            self._limits.queues.add(queue)
        self._publish(JobsAvailable(frozenset({queue})))
        return True

    async def stats(self, finished: bool, tenant_id: str | None) -> list[QueueStats]:
        """Every queue's statistics; the counts and run times of ``tenant_id``'s jobs only
        when it is given (the settings and workers are every tenant's)."""
        tenant = {"tenant_id": tenant_id}

        async def fetch(conn: Conn, name: str, **values: object) -> list[Any]:
            stmt = _SQL[name]
            return list(await conn.fetch(stmt.sql, *stmt.args({**tenant, **values})))

        async def read(conn: Conn) -> list[QueueStats]:
            counts = await fetch(conn, "stats_counts")
            if finished:
                counts += await fetch(conn, "stats_finished", window_s=FINISHED_WINDOW_S)
            due = await fetch(conn, "stats_due")
            recent = await fetch(conn, "stats_recent")
            settings = await fetch(conn, "queue_settings")
            workers = await read_workers(conn)
            names = {r["queue"] for r in counts} | {r["queue"] for r in recent}
            names |= {r["name"] for r in settings} | {q for w in workers for q in w.queues}
            run_times = await fetch(conn, "stats_run_times", queues=sorted(names))
            return _queue_stats(counts, due, recent, run_times, settings, workers, finished)

        return await self._db.transact(
            read, Scope(tenant_id), isolation="repeatable_read", readonly=True
        )


async def _exists(conn: Conn, queue: str) -> bool:
    stmt = _SQL["queue_exists"]
    return bool(await conn.fetchval(stmt.sql, *stmt.args({"queue": queue})))


async def _drop_offers(conn: Conn, queue: str) -> None:
    stmt = _SQL["drop_offers"]
    await conn.execute(stmt.sql, *stmt.args({"queue": queue}))


def _queue_stats(
    counts: Sequence[Any],
    due: Sequence[Any],
    recent: Sequence[Any],
    run_times: Sequence[Any],
    settings: Sequence[Any],
    workers: Sequence[WorkerInfo],
    finished: bool,
) -> list[QueueStats]:
    return assemble_queue_stats(
        [(q, state, kind, n) for q, state, kind, n in counts],
        {q: (n, None if age is None else float(age)) for q, n, age in due},
        {(q, state): n for q, state, n in recent},
        {
            q: (None if p50 is None else float(p50), None if p95 is None else float(p95))
            for q, p50, p95 in run_times
        },
        {name: (paused, cap) for name, paused, cap in settings},
        workers,
        finished=finished,
    )
