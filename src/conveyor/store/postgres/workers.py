"""Live workers on PostgreSQL: registered at start, renewed by heartbeats, listed."""

from __future__ import annotations

from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.enqueue import dumps
from conveyor.store.postgres.rows import WORKERS
from conveyor.store.records import WorkerInfo
from conveyor.store.sqlfile import load_statements

_SQL = load_statements(__package__, "$", "workers.sql")


class Workers:
    """Worker registrations: what `conveyor workers` and the queue statistics show."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, info: WorkerInfo, lease_s: float) -> None:
        stmt = _SQL["register_worker"]
        args = stmt.args(
            {
                "id": info.id,
                "hostname": info.hostname,
                "pid": info.pid,
                "queues": dumps(info.queues),
                "lease_s": lease_s,
                "kinds": dumps(list(info.kinds)),
                "memory_mb": info.memory_mb,
            }
        )
        await self._db.run(lambda conn: conn.execute(stmt.sql, *args))

    async def unregister(self, worker_id: str) -> None:
        stmt = _SQL["unregister_worker"]
        args = stmt.args({"worker_id": worker_id})
        await self._db.run(lambda conn: conn.execute(stmt.sql, *args))

    async def list(self) -> list[WorkerInfo]:
        return await self._db.run(read_workers)


async def read_workers(conn: Conn) -> list[WorkerInfo]:
    """The live workers, read on ``conn`` (in its transaction, if one is open)."""
    return [WORKERS.decode(r, 0) for r in await conn.fetch(_SQL["list_workers"].sql)]
