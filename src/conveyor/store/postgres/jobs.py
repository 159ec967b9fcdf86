"""Jobs on PostgreSQL by id (read, cancel, retry), lists of them, and pruning. A call for
one tenant (``tenant_id``) finds that tenant's jobs only: another tenant's id answers
None, as no job does."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from conveyor.store.base import CancelRequested, ConflictError, JobsAvailable, Notice
from conveyor.store.filters import ListQuery
from conveyor.store.postgres.connection import Conn, Database, Scope
from conveyor.store.postgres.listener import notify_cancel, notify_queues
from conveyor.store.postgres.rows import JOBS
from conveyor.store.records import Job, JobFilter, JobState
from conveyor.store.sqlfile import load_parts, load_statements

_SQL = load_statements(__package__, "$", "jobs.sql")
_LIST = ListQuery(load_parts(__package__, "jobs.sql"), "list_jobs", JobFilter, "$")


class Jobs:
    """What an operator does to jobs; each change tells the workers it concerns, and with
    ``announce`` (events on) writes its event and calls it after the commit."""

    def __init__(
        self,
        db: Database,
        publish: Callable[[Notice], None],
        announce: Callable[[], None] | None,
    ) -> None:
        self._db = db
        self._publish = publish
        self._announce = announce

    async def get(self, job_id: int, tenant_id: str | None) -> Job | None:
        return await self._db.run(lambda conn: _get(conn, job_id, tenant_id), Scope(tenant_id))

    async def list(self, flt: JobFilter) -> list[Job]:
        stmt, args = _LIST.statement(flt)
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args), Scope(flt.tenant_id))
        return [JOBS.decode(r, 0) for r in rows]

    async def cancel(self, job_id: int, tenant_id: str | None) -> Job | None:
        key = {"job_id": job_id, "tenant_id": tenant_id, "events": self._announce is not None}

        async def tx(conn: Conn) -> tuple[bool, Job | None]:
            stmt = _SQL["cancel"]
            row = await conn.fetchrow(stmt.sql, *stmt.args(key))
            if row is None:
                return False, await _get(conn, job_id, tenant_id)
            job = JOBS.decode(row, 0)
            if job.state is JobState.RUNNING:
                await notify_cancel(conn, job_id)
            return True, job

        changed, job = await self._db.transact(tx, Scope(tenant_id))
        if changed and job is not None:
            if job.state is JobState.RUNNING:
                self._publish(CancelRequested(frozenset({job_id})))
            else:
                self._appended()
        return job

    async def retry(self, job_id: int, tenant_id: str | None) -> Job | None:
        key = {"job_id": job_id, "tenant_id": tenant_id, "events": self._announce is not None}

        async def tx(conn: Conn) -> tuple[bool, Job | None]:
            stmt = _SQL["retry"]
            try:
                row = await conn.fetchrow(stmt.sql, *stmt.args(key))
            except asyncpg.UniqueViolationError as exc:
                raise ConflictError(
                    f"job {job_id} cannot be retried: another queued or running job "
                    "holds its unique_key; cancel that job first"
                ) from exc
            if row is None:
                return False, await _get(conn, job_id, tenant_id)
            job = JOBS.decode(row, 0)
            await notify_queues(conn, [job.queue])
            return True, job

        requeued, job = await self._db.transact(tx, Scope(tenant_id))
        if requeued and job is not None:
            self._publish(JobsAvailable(frozenset({job.queue})))
            self._appended()
        return job

    def _appended(self) -> None:
        if self._announce is not None:
            self._announce()

    async def prune(self, older_than_s: float, limit: int) -> int:
        stmt = _SQL["prune"]
        args = stmt.args({"older_than_s": older_than_s, "limit": limit})
        status = await self._db.run(lambda conn: conn.execute(stmt.sql, *args))
        return int(status.rsplit(" ", 1)[-1])


async def _get(conn: Conn, job_id: int, tenant_id: str | None) -> Job | None:
    stmt = _SQL["get_job"]
    row = await conn.fetchrow(stmt.sql, *stmt.args({"job_id": job_id, "tenant_id": tenant_id}))
    return JOBS.decode(row, 0) if row is not None else None
