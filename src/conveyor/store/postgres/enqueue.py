"""Enqueues on PostgreSQL: one job (handed to a waiting worker when one offers a slot), a
batch in one statement, a large batch by binary COPY, and a periodic tick."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

import orjson

from conveyor.store.base import (
    ConflictError,
    DataRejected,
    EventsAppended,
    JobsAvailable,
    Notice,
    StoreError,
)
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.listener import CHANNEL
from conveyor.store.records import Enqueued, NewJob
from conveyor.store.sqlfile import load_statements
from conveyor.store.ticks import TickTaken

_SQL = load_statements(__package__, "$", "enqueue.sql")

COPY_FROM = 64
"""Batches at least this large, without unique keys, are written with COPY, which the
server takes faster than the JSON statement."""

_COPY_COLUMNS = (
    "id",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "payload",
    "max_attempts",
    "timeout_s",
)
"""What a job due now with no meta needs: state, run_at, created_at and meta take their
column defaults, which equal the values written out (``now()`` is the transaction's)."""

_COPY_ALL_COLUMNS = (*_COPY_COLUMNS, "run_at", "meta")


def dumps(value: Any) -> str:
    """JSON text, as every JSON parameter travels."""
    return orjson.dumps(value).decode()


def job_values(job: NewJob, events: bool) -> dict[str, Any]:
    """A job as the parameters of insert_job (and of create_request, which takes them);
    ``events``: whether the statement writes the job's event."""
    return {
        "tenant_id": job.tenant_id,
        "queue": job.queue,
        "kind": job.kind,
        "priority": job.priority,
        "payload": dumps(job.payload),
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "delay_s": job.delay_s,
        "timeout_s": job.timeout_s,
        "unique_key": job.unique_key,
        "meta": dumps(job.meta),
        "channel": CHANNEL,
        "events": events,
    }


def job_fields(ordinal: int, job: NewJob) -> dict[str, Any]:
    """A job as a row of the JSON batches of insert_jobs and create_requests."""
    return {
        "ord": ordinal,
        "tenant_id": job.tenant_id,
        "queue": job.queue,
        "kind": job.kind,
        "priority": job.priority,
        "payload": job.payload,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "delay_s": job.delay_s,
        "timeout_s": job.timeout_s,
        "unique_key": job.unique_key,
        "meta": job.meta,
    }


class Enqueuer:
    """Inserts jobs (with their job.queued events when ``events``) and tells this
    process's listeners of them (other processes hear of them by the statements' NOTIFY)."""

    def __init__(self, db: Database, publish: Callable[[Notice], None], *, events: bool) -> None:
        self._db = db
        self._publish = publish
        self._events = events

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        if not jobs:
            return []
        # Many jobs without unique keys go by binary COPY; others, and single jobs, by one
        # statement with no explicit transaction: one round trip.
        bulk = len(jobs) >= COPY_FROM and all(job.unique_key is None for job in jobs)
        try:
            if len(jobs) == 1:
                result, handed_off = await self._db.run(
                    lambda conn: insert_job(conn, jobs[0], self._events)
                )
                if result is not None:
                    # A job handed to a worker is heard of by that worker alone.
                    if not handed_off:
                        self._publish(JobsAvailable(frozenset({jobs[0].queue})))
                    self._appended()
                    return [result]
            results = await self._db.run(
                lambda conn: (
                    copy_jobs(conn, jobs, self._events)
                    if bulk
                    else insert_jobs(conn, jobs, self._events)
                )
            )
        except (orjson.JSONEncodeError, OverflowError, DataRejected) as exc:
            # What asyncpg's binary COPY cannot encode (a number out of its column's
            # range) comes out raw, not as the DataError a statement's argument gives.
            raise DataRejected(f"a job could not be stored: {exc}") from exc
        self._publish(JobsAvailable(frozenset(job.queue for job in jobs)))
        self._appended()
        return results

    async def enqueue_periodic(self, job: NewJob, tick: float) -> Enqueued | None:
        async def tx(conn: Conn) -> Enqueued | None:
            try:
                async with conn.transaction():
                    (result,) = await insert_jobs(conn, [job], self._events)
                    stmt = _SQL["insert_tick"]
                    taken = await conn.fetchval(
                        stmt.sql, *stmt.args({"kind": job.kind, "tick": tick, "job_id": result.id})
                    )
                    if taken is None:
                        raise TickTaken  # noqa: TRY301  (rolls the transaction back)
            except TickTaken:
                return None
            return result

        result = await self._db.run(tx)
        if result is not None:
            self._publish(JobsAvailable(frozenset({job.queue})))
            self._appended()
        return result

    def _appended(self) -> None:
        """Tell this process's listeners of the events just committed (others heard the
        statement's NOTIFY)."""
        if self._events:
            self._publish(EventsAppended())


async def insert_job(conn: Conn, job: NewJob, events: bool) -> tuple[Enqueued | None, bool]:
    """One job, handed to a waiting worker if one offers a slot; (None, False) when an
    active job holds its unique_key. The flag: whether it was handed off."""
    stmt = _SQL["insert_job"]
    row = await conn.fetchrow(stmt.sql, *stmt.args(job_values(job, events)))
    if row is None:
        return None, False
    return Enqueued(row["id"], created=True), row["handed_off"]


async def insert_jobs(conn: Conn, jobs: Sequence[NewJob], events: bool) -> list[Enqueued]:
    """Insert in the caller's transaction; unique_key duplicates resolve to the active job
    (an earlier one of the same call included) and write no event; with ``events`` the
    jobs inserted write their job.queued."""
    first_of_key: dict[tuple[str, str], int] = {}
    batch: list[dict[str, Any]] = []
    repeats: dict[int, int] = {}  # input index -> index of the first job with its key
    for index, job in enumerate(jobs):
        if job.unique_key is not None:
            key = (job.tenant_id, job.unique_key)
            if key in first_of_key:
                repeats[index] = first_of_key[key]
                continue
            first_of_key[key] = index
        batch.append(job_fields(index, job))
    stmt = _SQL["insert_jobs"]
    values = {"batch": dumps(batch), "channel": CHANNEL, "events": events}
    row = await conn.fetchrow(stmt.sql, *stmt.args(values))
    if row is None:
        raise StoreError("the insert statement returned no row")
    ids: list[int] = row["ids"]
    conflicts: list[int] = row["conflicts"] or []
    taken = set(conflicts)
    results: dict[int, Enqueued] = {
        fields["ord"]: Enqueued(job_id, created=True)
        for fields, job_id in zip(batch, ids, strict=True)
        if fields["ord"] not in taken
    }
    if conflicts:
        find = _SQL["find_active_unique"]
        found = await conn.fetch(
            find.sql,
            *find.args(
                {
                    "tenant_ids": [jobs[i].tenant_id for i in conflicts],
                    "unique_keys": [jobs[i].unique_key for i in conflicts],
                }
            ),
        )
        holders = {(r["tenant_id"], r["unique_key"]): r["id"] for r in found}
        for index in conflicts:
            holder = holders.get((jobs[index].tenant_id, jobs[index].unique_key or ""))
            if holder is None:
                # The holder finished between the insert and the look-up.
                raise ConflictError(
                    f"unique_key {jobs[index].unique_key!r} was released while enqueueing; "
                    "enqueue again"
                )
            results[index] = Enqueued(holder, created=False)
    for index, first in repeats.items():
        results[index] = Enqueued(results[first].id, created=False)
    return [results[index] for index in range(len(jobs))]


async def copy_jobs(conn: Conn, jobs: Sequence[NewJob], events: bool) -> list[Enqueued]:
    """Insert jobs without unique keys by binary COPY, in one transaction with their
    events and NOTIFYs."""
    async with conn.transaction():
        reserve = _SQL["reserve_ids"]
        row = await conn.fetchrow(reserve.sql, *reserve.args({"count": len(jobs)}))
        if row is None:
            raise StoreError("the id reservation returned no row")
        ids: list[int] = row["ids"]
        now: datetime = row["now"]
        # Per-job work is most of a bulk enqueue's client time: the common batch (all due
        # now, no meta) sends only the columns without defaults, and the rows are built as
        # COPY sends them (a generator, not a list), while the server inserts the earlier
        # ones.
        records: Iterator[tuple[Any, ...]] = (
            (
                job_id,
                job.tenant_id,
                job.queue,
                job.kind,
                job.priority,
                dumps(job.payload),
                job.max_attempts,
                job.timeout_s,
            )
            for job_id, job in zip(ids, jobs, strict=True)
        )
        columns: tuple[str, ...] = _COPY_COLUMNS
        if any(job.run_at is not None or job.delay_s or job.meta for job in jobs):
            columns = _COPY_ALL_COLUMNS
            records = (
                (*record, _run_at(job, now), dumps(job.meta))
                for record, job in zip(records, jobs, strict=True)
            )
        await conn.copy_records_to_table("conveyor_jobs", records=records, columns=columns)
        copied = _SQL["copied_jobs"]
        values = {
            "ids": ids,
            "queues": sorted({job.queue for job in jobs}),
            "channel": CHANNEL,
            "events": events,
        }
        await conn.execute(copied.sql, *copied.args(values))
    return list(map(Enqueued, ids, repeat(True)))


def _run_at(job: NewJob, now: datetime) -> datetime:
    if job.run_at is not None:
        return datetime.fromtimestamp(job.run_at, UTC)
    return now + timedelta(seconds=job.delay_s) if job.delay_s else now
