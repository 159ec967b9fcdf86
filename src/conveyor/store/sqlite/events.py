"""The event log on SQLite: events written in the transaction of each change, read back
with filters, pruned; the cursors of the log's consumers (each run on the store's thread,
inside the transaction the store opened).

SQLite commits one writer at a time, so ids are taken in commit order and a reader never
sees a gap that a running transaction may still fill: every page's horizon is
:data:`HORIZON`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from conveyor.store.columns import Column, Table, column_list
from conveyor.store.filters import ListQuery
from conveyor.store.records import (
    JSON,
    ErrorEntry,
    Event,
    EventFilter,
    EventPage,
    EventType,
)
from conveyor.store.sqlfile import load_parts, load_statements
from conveyor.store.sqlite.rows import dumps

_SQL = load_statements(__package__, "?", "events.sql")
_PARTS = load_parts(__package__, "events.sql")

HORIZON = (1, 0)
"""The horizon of every page (:class:`~conveyor.store.records.EventPage`): a gap seen is
final at once, since no transaction that could fill it can still be running."""

EVENT: Table[Event] = Table(
    Event,
    (
        Column("id"),
        Column("tenant_id"),
        Column("type", EventType),
        Column("job_id"),
        Column("kind"),
        Column("queue"),
        Column("attempt"),
        Column("body", orjson.loads),
        Column("at"),
        Column("request_id"),
    ),
)
"""The part ``event_columns`` (its names as the aliases ``AS`` gives them)."""
EVENT.check(
    [name.split()[-1] for name in column_list(_PARTS["event_columns"])], "part event_columns"
)

Entry = list[Any]
"""One event to write: ``[job_id, type, body]`` (:func:`record`)."""


@dataclass(frozen=True, slots=True)
class _Query:
    """An :class:`EventFilter` as the list statement binds it: lists as JSON arrays."""

    after_id: int
    through_id: int | None
    tenant_id: str | None
    job_id: int | None
    kinds: str | None
    types: str | None
    limit: int


_READ = ListQuery(_PARTS, "read_events", _Query, "?")


def entry(job_id: int, type: EventType, body: dict[str, JSON]) -> Entry:
    """The event ``type`` of job ``job_id``, with ``body`` (:class:`Event`'s docstring)."""
    return [job_id, type.value, body]


def error_body(error: ErrorEntry) -> dict[str, JSON]:
    """An error as events tell it: its type and message, never its traceback."""
    return {"type": error.type, "message": error.message}


def record(conn: sqlite3.Connection, now: float, entries: Sequence[Entry]) -> None:
    """Write the events of the changes ``entries`` name, in their order, in one statement;
    each job's tenant, kind, queue and attempt are read from its row."""
    if entries:
        statement = _SQL["insert_events"]
        conn.execute(statement.sql, statement.args({"events": dumps(entries), "now": now}))


def record_queued(conn: sqlite3.Connection, now: float, first: int, last: int) -> None:
    """Write ``job.queued`` of the jobs ``first`` to ``last`` just inserted."""
    statement = _SQL["insert_queued"]
    conn.execute(statement.sql, statement.args({"first": first, "last": last, "now": now}))


def read(conn: sqlite3.Connection, flt: EventFilter) -> EventPage:
    sql, args = read_statement(flt)
    return EventPage(tuple(map(EVENT.decode, conn.execute(sql, args))), HORIZON)


def read_statement(flt: EventFilter) -> tuple[str, tuple[Any, ...]]:
    """The statement that reads ``flt``'s events (the one of its shape) and its arguments."""
    query = _Query(
        after_id=flt.after_id,
        through_id=flt.through_id,
        tenant_id=flt.tenant_id,
        job_id=flt.job_id,
        kinds=dumps(flt.kinds) if flt.kinds else None,
        types=dumps([t.value for t in flt.types]) if flt.types else None,
        limit=flt.limit,
    )
    statement, args = _READ.statement(query)
    return statement.sql, args


def last_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_SQL["last_event_id"].sql).fetchone()[0])


def prune(conn: sqlite3.Connection, now: float, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` events written before ``older_than_s`` ago; how many."""
    statement = _SQL["prune_events"]
    values = {"before": now - older_than_s, "limit": limit}
    return int(conn.execute(statement.sql, statement.args(values)).rowcount)


def cursor(conn: sqlite3.Connection, name: str) -> int | None:
    statement = _SQL["event_cursor"]
    row = conn.execute(statement.sql, statement.args({"name": name})).fetchone()
    return None if row is None else int(row[0])


def move_cursor(
    conn: sqlite3.Connection, now: float, name: str, expected: int | None, to: int
) -> bool:
    """Move ``name``'s cursor from ``expected`` (None: create it) to ``to``; False, and
    nothing written, if it was not at ``expected``."""
    statement = _SQL["create_event_cursor" if expected is None else "move_event_cursor"]
    values = {"name": name, "expected": expected, "to": to, "now": now}
    return conn.execute(statement.sql, statement.args(values)).rowcount == 1
