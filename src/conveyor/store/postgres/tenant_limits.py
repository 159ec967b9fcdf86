"""Per-(queue, tenant) limits on the PostgreSQL store: setting them under the queue row's
lock, so that claims counting a capped tenant's running jobs see the cap and the count of
one moment, and telling every store that the queue's claims now lock."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.store.base import JobsAvailable, Notice
from conveyor.store.fairness import TENANT_LIMITS
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.exchange import Limits
from conveyor.store.postgres.listener import notify_limit, notify_queues
from conveyor.store.records import TenantLimits
from conveyor.store.sqlfile import load_statements

_SQL = load_statements(__package__, "$", "tenant_limits.sql")


class TenantLimitsStore:
    """``set_tenant_limits`` and ``list_tenant_limits`` of the PostgreSQL store."""

    def __init__(self, db: Database, publish: Callable[[Notice], None], limits: Limits) -> None:
        self._db = db
        self._publish = publish
        self._limits = limits

    async def set(
        self,
        queue: str,
        tenant_id: str,
        concurrency: int | None,
        rate: str | None,
        weight: int | None,
    ) -> None:
        values = {
            "queue": queue,
            "tenant_id": tenant_id,
            "concurrency": concurrency,
            "rate": rate,
            "weight": weight,
        }

        async def tx(conn: Conn) -> bool:
            async with conn.transaction():
                lock = _SQL["lock_queue"]
                await conn.execute(lock.sql, *lock.args(values))
                clear = concurrency is None and rate is None and weight is None
                stmt = _SQL["delete" if clear else "upsert"]
                await conn.execute(stmt.sql, *stmt.args(values))
                mark = _SQL["mark_caps"]
                capped = bool(await conn.fetchval(mark.sql, *mark.args(values)))
                if capped:
                    drop = _SQL["drop_offers"]
                    await conn.execute(drop.sql, *drop.args(values))
                # 'l:' tells every store to reload which queues lock; 'q:' wakes workers.
                await notify_limit(conn, queue)
                await notify_queues(conn, [queue])
                return capped

        capped = await self._db.run(tx)
        if capped:
            self._limits.queues.add(queue)
        else:
            await self._db.run(self._limits.load)
        self._publish(JobsAvailable(frozenset({queue})))

    async def list(self, queue: str | None) -> list[TenantLimits]:
        stmt = _SQL["list"]
        args = stmt.args({"queue": queue})
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args))
        return [TENANT_LIMITS.decode(r) for r in rows]
