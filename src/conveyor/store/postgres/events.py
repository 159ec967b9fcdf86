"""The event log on PostgreSQL: reading it (with the snapshot's horizon), pruning it, and
the cursors of its consumers. The events themselves are written by the statements of the
changes they tell of (enqueue, requests, exchange, jobs), in their transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from conveyor.store.base import EventsAppended, JobsAvailable, Notice
from conveyor.store.postgres.connection import OPERATOR, Conn, Database, Scope
from conveyor.store.postgres.enqueue import insert_jobs
from conveyor.store.postgres.rows import EVENTS
from conveyor.store.records import EventFilter, EventPage, NewJob
from conveyor.store.sqlfile import load_statements

_SQL = load_statements(__package__, "$", "events.sql")

_HORIZON = EVENTS.width
"""Where the horizon's two columns start in a row of read_events."""


class Events:
    """Reads and prunes the log, and moves its consumers' cursors (the jobs enqueued with
    a move write their events when ``events``)."""

    def __init__(self, db: Database, publish: Callable[[Notice], None], *, events: bool) -> None:
        self._db = db
        self._publish = publish
        self._events = events

    async def read(self, flt: EventFilter) -> EventPage:
        stmt = _SQL["read_events" if flt.tenant_id is None else "read_events_of_tenant"]
        args = stmt.args(
            {
                "after_id": flt.after_id,
                "through_id": flt.through_id,
                "tenant_id": flt.tenant_id,
                "job_id": flt.job_id,
                "kinds": list(flt.kinds),
                "types": [t.value for t in flt.types],
                "limit": flt.limit,
            }
        )
        # A tenant's read runs in its scope, so the API's role sees that tenant's rows
        # alone; None is the operator's, every tenant's.
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args), Scope(flt.tenant_id))
        first = rows[0]
        events = tuple(EVENTS.decode(r, 0) for r in rows if r["id"] is not None)
        return EventPage(events, (first[_HORIZON], first[_HORIZON + 1]))

    async def last_id(self) -> int:
        stmt = _SQL["last_event_id"]
        return int(await self._db.run(lambda conn: conn.fetchval(stmt.sql)))

    async def prune(self, older_than_s: float, limit: int) -> int:
        stmt = _SQL["prune_events"]
        args = stmt.args({"older_than_s": older_than_s, "limit": limit})
        status = await self._db.run(lambda conn: conn.execute(stmt.sql, *args))
        return int(status.rsplit(" ", 1)[-1])

    async def cursor(self, name: str) -> int | None:
        stmt = _SQL["event_cursor"]
        args = stmt.args({"name": name})
        value: int | None = await self._db.run(lambda conn: conn.fetchval(stmt.sql, *args))
        return value

    async def advance_cursor(
        self, name: str, expected: int | None, to: int, jobs: Sequence[NewJob]
    ) -> bool:
        events = self._events

        async def tx(conn: Conn) -> bool:
            if expected is None:
                stmt = _SQL["create_event_cursor"]
                values = {"name": name, "to": to}
            else:
                stmt = _SQL["move_event_cursor"]
                values = {"name": name, "to": to, "expected": expected}
            if await conn.fetchval(stmt.sql, *stmt.args(values)) is None:
                return False
            if jobs:
                # Their NOTIFY (the queues, and 'e' for their events) goes with this
                # transaction's commit.
                await insert_jobs(conn, jobs, events)
            return True

        # The deliveries are every tenant's: the operator's scope.
        moved = await self._db.transact(tx, OPERATOR)
        if moved and jobs:
            self._publish(JobsAvailable(frozenset(job.queue for job in jobs)))
            if events:
                self._publish(EventsAppended())
        return moved
