"""Requests on PostgreSQL: what a user asked for, created with its job in one statement.
Every statement is one tenant's: the tenant is in its ``WHERE``, and the API's store runs
it in that tenant's scope (:class:`~conveyor.store.postgres.connection.Scope`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import orjson

from conveyor.store.base import ConflictError, DataRejected, EventsAppended, JobsAvailable, Notice
from conveyor.store.coalesce import Coalescer
from conveyor.store.filters import ListQuery
from conveyor.store.postgres.connection import Database, Scope
from conveyor.store.postgres.enqueue import dumps, job_fields, job_values
from conveyor.store.postgres.listener import CHANNEL
from conveyor.store.postgres.rows import REQUESTS
from conveyor.store.records import Job, NewRequest, Request, RequestFilter, StoredRequest
from conveyor.store.sqlfile import load_parts, load_statements

T = TypeVar("T")

_SQL = load_statements(__package__, "$", "requests.sql")
_LIST = ListQuery(load_parts(__package__, "requests.sql"), "list_requests", RequestFilter, "$")

_CREATE_REQUEST_PASSES = 3
"""A pass is repeated only after a racing call committed; two such races in a row are
already unlikely."""


class Requests:
    """Creates and reads requests, and tells this process's listeners of their jobs (and
    of the jobs' events, written with them when ``events``)."""

    def __init__(self, db: Database, publish: Callable[[Notice], None], *, events: bool) -> None:
        self._db = db
        self._publish = publish
        self._events = events
        self._plain: dict[str, Coalescer[NewRequest, StoredRequest]] = {}
        """One batcher per tenant: a batch is written in its tenant's scope, which admits
        no other tenant's rows. One small object per tenant that submitted."""

    async def close(self) -> None:
        for coalescer in list(self._plain.values()):
            await coalescer.close()

    async def create(self, new: NewRequest) -> StoredRequest:
        if new.idempotency_key is None and new.job.unique_key is None:
            coalescer = self._plain.get(new.tenant_id)
            if coalescer is None:
                coalescer = self._plain[new.tenant_id] = Coalescer(self._create_plain)
            return await coalescer(new)
        return await self._create_one(new)

    async def _create_plain(self, news: list[NewRequest]) -> list[StoredRequest | BaseException]:
        """Plain requests of one tenant that arrived together, in one statement (see
        create_requests in requests.sql), which costs the server less per request than one
        statement each.
        If the batch cannot be encoded or the statement fails on what a request holds
        (JSON that jsonb refuses, say), each is created alone, so only that one fails."""
        stmt = _SQL["create_requests"]
        try:
            doc = dumps(
                [
                    {
                        **job_fields(i, new.job),
                        "caller_id": new.caller_id,
                        "request_kind": new.kind,
                        "input": new.input,
                        "http_request_id": new.http_request_id,
                    }
                    for i, new in enumerate(news)
                ]
            )
            args = stmt.args({"batch": doc, "channel": CHANNEL, "events": self._events})
            scope = Scope(news[0].tenant_id)
            rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args), scope)
        except (orjson.JSONEncodeError, DataRejected, asyncpg.PostgresError):
            return [await _outcome(self._create_one(new)) for new in news]
        self._created(frozenset(new.job.queue for new in news))
        by_ord = {row["ord"]: row for row in rows}
        return [
            StoredRequest(REQUESTS.decode(row, 0), True, row["queue_position"])
            for row in (by_ord[i] for i in range(len(news)))
        ]

    async def _create_one(self, new: NewRequest) -> StoredRequest:
        """One request in its own statement, with its Idempotency-Key and unique_key."""
        job = new.job
        stmt = _SQL["create_request"]
        try:
            args = stmt.args(
                {
                    **job_values(job, self._events),
                    "caller_id": new.caller_id,
                    "request_kind": new.kind,
                    "input": dumps(new.input),
                    "idempotency_key": new.idempotency_key,
                    "http_request_id": new.http_request_id,
                }
            )
        except orjson.JSONEncodeError as exc:
            raise DataRejected(f"a request could not be stored: {exc}") from exc

        # Each pass either answers or saw a racing call commit what it needs to see (see
        # the statement): the next pass, with a new snapshot, answers. Each is a call of
        # its own, so that in the API's scoped transaction a pass that failed does not
        # leave the next one in an aborted transaction.
        scope = Scope(new.tenant_id)
        for _ in range(_CREATE_REQUEST_PASSES):
            try:
                row = await self._db.run(lambda conn: conn.fetchrow(stmt.sql, *args), scope)
            except ConflictError:
                continue
            except DataRejected as exc:
                raise DataRejected(f"a request could not be stored: {exc}") from exc
            if row is not None:
                break
        else:
            raise ConflictError(
                f"request with idempotency key {new.idempotency_key!r} and job unique_key "
                f"{job.unique_key!r} kept racing with other calls; submit again"
            )
        created: bool = row["created"]
        if created:
            self._created(frozenset({job.queue}))
        return StoredRequest(REQUESTS.decode(row, 0), created, row["queue_position"])

    def _created(self, queues: frozenset[str]) -> None:
        """Tell this process's listeners of jobs (and their events) just committed in
        ``queues``; other processes heard the statement's NOTIFY."""
        self._publish(JobsAvailable(queues))
        if self._events:
            self._publish(EventsAppended())

    async def get(self, request_id: int, tenant_id: str) -> Request | None:
        stmt = _SQL["get_request"]
        args = stmt.args({"request_id": request_id, "tenant_id": tenant_id})
        row = await self._db.run(lambda conn: conn.fetchrow(stmt.sql, *args), Scope(tenant_id))
        return REQUESTS.decode(row, 0) if row is not None else None

    async def list(self, flt: RequestFilter) -> list[Request]:
        stmt, args = _LIST.statement(flt)
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args), Scope(flt.tenant_id))
        return [REQUESTS.decode(r, 0) for r in rows]

    async def queue_position(self, job: Job) -> int:
        stmt = _SQL["queue_position"]
        args = stmt.args(
            {
                "queue": job.queue,
                "tenant_id": job.tenant_id,
                "priority": job.priority,
                "run_at": job.run_at,
                "job_id": job.id,
            }
        )
        scope = Scope(job.tenant_id)
        return int(await self._db.run(lambda conn: conn.fetchval(stmt.sql, *args), scope))


async def _outcome(call: Awaitable[T]) -> T | Exception:
    """What ``call`` returns, or the exception it raises."""
    try:
        return await call
    except Exception as exc:  # handed to the caller it belongs to
        return exc
