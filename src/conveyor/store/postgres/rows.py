"""Rows of the PostgreSQL store as records, each shape decoded from one column table.

A :class:`Table` lists a record's columns in the order the statements select them, which
is the record's field order (checked at import), with how the value a row holds becomes
the field. The jobs table also says how a handoff notice carries each column. The
decoders are generated from the tables once, at import, as the plain positional call
one would write by hand: every claimed job is decoded here, and a loop over the columns
would be per-job work on the claim path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeAlias, TypeVar, cast

import asyncpg
import orjson

from conveyor.store.base import JobHandedOff
from conveyor.store.records import JOB_COLUMNS, ErrorEntry, Job, JobState, Request, WorkerInfo

R = TypeVar("R")
Row: TypeAlias = "asyncpg.Record | Sequence[Any]"


def _time(value: datetime) -> float:
    return value.timestamp()


def time_or_none(value: datetime | None) -> float | None:
    """A timestamp as Unix seconds, None kept."""
    return None if value is None else value.timestamp()


def _json_or_none(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _errors(text: str) -> tuple[ErrorEntry, ...]:
    return tuple(ErrorEntry.from_json(e) for e in orjson.loads(text))


def _tuple_of_json(text: str) -> tuple[Any, ...]:
    return tuple(orjson.loads(text))


@dataclasses.dataclass(frozen=True, slots=True)
class Fixed:
    """A column a handoff notice leaves out: every handed-off job has this value."""

    value: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One column of a row and the record field it fills."""

    name: str
    decode: Callable[[Any], Any] | Table[Any] | None = None
    """From the value a row holds to the field's: None takes it as it is; a table reads
    its columns from here on into a nested record."""
    handed_off: Callable[[Any], Any] | Fixed | None = None
    """From the value a handoff notice carries (JSON: times as epoch seconds, JSON
    columns already parsed): None takes it as it is; :class:`Fixed` when not carried."""


class Table(Generic[R]):
    """The columns of ``record``, in its field order, and the decoder built from them."""

    def __init__(self, record: type[R], columns: Sequence[Column]) -> None:
        fields = tuple(f.name for f in dataclasses.fields(cast(Any, record)))
        names = tuple(c.name for c in columns)
        if names != fields:
            raise ValueError(f"columns {names} are not the fields of {record.__name__} {fields}")
        self.record = record
        self.columns = tuple(columns)
        self.width: int = sum(_width(c) for c in columns)
        """How many columns of a row the record takes (a nested table's included)."""
        self.decode: Callable[[Row, int], R] = self._build_row_decoder()
        """``decode(row, offset=0)``: the record whose columns start at ``offset``."""

    def _build_row_decoder(self) -> Callable[[Row, int], R]:
        scope: dict[str, Any] = {"record": self.record}
        values = []
        at = 0
        for index, column in enumerate(self.columns):
            value = f"r[o + {at}]"
            if isinstance(column.decode, Table):
                scope[f"d{index}"] = column.decode.decode
                value = f"d{index}(r, o + {at})"
            elif column.decode is not None:
                scope[f"d{index}"] = column.decode
                value = f"d{index}({value})"
            values.append(value)
            at += _width(column)
        return cast(
            Callable[[Row, int], R],
            _compile("decode", "r, o=0", f"record({', '.join(values)})", scope),
        )

    def notice_decoder(self, carried: Sequence[str]) -> Callable[[Sequence[Any]], R]:
        """A decoder of the JSON array that carries the columns ``carried`` in that order;
        every other column must be :class:`Fixed`."""
        position = {name: at for at, name in enumerate(carried)}
        scope: dict[str, Any] = {"record": self.record}
        values = []
        for index, column in enumerate(self.columns):
            how = column.handed_off
            if isinstance(how, Fixed):
                if column.name in position:
                    raise ValueError(f"column {column.name!r} is carried but marked Fixed")
                scope[f"c{index}"] = how.value
                values.append(f"c{index}")
                continue
            if column.name not in position:
                raise ValueError(f"column {column.name!r} is neither carried nor Fixed")
            value = f"f[{position[column.name]}]"
            if how is not None:
                scope[f"d{index}"] = how
                value = f"d{index}({value})"
            values.append(value)
        return cast(
            Callable[[Sequence[Any]], R],
            _compile("decode_notice", "f", f"record({', '.join(values)})", scope),
        )


def _width(column: Column) -> int:
    return column.decode.width if isinstance(column.decode, Table) else 1


def _compile(name: str, params: str, body: str, scope: dict[str, Any]) -> Callable[..., Any]:
    """The function ``def name(params): return body`` with ``scope`` as its globals."""
    source = f"def {name}({params}):\n    return {body}\n"
    exec(compile(source, f"<conveyor.store.postgres.rows {name}>", "exec"), scope)
    function: Callable[..., Any] = scope[name]
    function.__doc__ = source
    return function


JOBS: Table[Job] = Table(
    Job,
    (
        Column("id"),
        Column("tenant_id"),
        Column("queue"),
        Column("kind"),
        Column("priority"),
        Column("state", JobState, handed_off=Fixed(JobState.RUNNING)),
        Column("payload", orjson.loads),
        Column("result", _json_or_none, handed_off=Fixed(None)),
        Column("attempt"),
        Column("max_attempts"),
        Column("run_at", _time, handed_off=float),
        Column("timeout_s"),
        Column("unique_key"),
        Column("locked_by"),
        Column("lease_expires_at", time_or_none, handed_off=float),
        Column("errors", _errors, handed_off=Fixed(())),
        Column("progress", handed_off=Fixed(None)),
        Column("progress_message", handed_off=Fixed(None)),
        Column("cancel_requested", handed_off=Fixed(False)),
        Column("meta", orjson.loads),
        Column("created_at", _time, handed_off=float),
        Column("started_at", time_or_none, handed_off=float),
        Column("finished_at", time_or_none, handed_off=Fixed(None)),
    ),
)
"""``conveyor_jobs``, in table order (``SELECT *``, ``RETURNING *``)."""

if tuple(c.name for c in JOBS.columns) != JOB_COLUMNS:
    raise ValueError(f"the job table's columns differ from JOB_COLUMNS {JOB_COLUMNS}")

HANDOFF_COLUMNS = (
    "locked_by",
    "id",
    "attempt",
    "tenant_id",
    "queue",
    "kind",
    "priority",
    "payload",
    "max_attempts",
    "run_at",
    "timeout_s",
    "unique_key",
    "lease_expires_at",
    "meta",
    "created_at",
    "started_at",
)
"""The columns a handoff notice carries, in its order (the json_build_array of the part
notify_or_hand_off in enqueue.sql); a notice too large for NOTIFY carries the first three
only."""

_SHORT_HANDOFF = 3
_handed_off_job = JOBS.notice_decoder(HANDOFF_COLUMNS)


def decode_handoff(value: str) -> JobHandedOff:
    """A handoff notice's payload (after ``h:``)."""
    carried = orjson.loads(value)
    worker_id, job_id, attempt = carried[:_SHORT_HANDOFF]
    if len(carried) == _SHORT_HANDOFF:
        return JobHandedOff(worker_id, job_id, attempt, None)
    return JobHandedOff(worker_id, job_id, attempt, _handed_off_job(carried))


REQUESTS: Table[Request] = Table(
    Request,
    (
        Column("id"),
        Column("tenant_id"),
        Column("caller_id"),
        Column("kind"),
        Column("input", orjson.loads),
        Column("idempotency_key"),
        Column("http_request_id"),
        Column("created_at", _time),
        Column("job", JOBS),
    ),
)
"""A request row followed by its job's columns (the shape of requests.sql's
``request_columns``)."""

WORKERS: Table[WorkerInfo] = Table(
    WorkerInfo,
    (
        Column("id"),
        Column("hostname"),
        Column("pid"),
        Column("queues", orjson.loads),
        Column("started_at", _time),
        Column("last_seen_at", _time),
        Column("expires_at", _time),
        Column("memory_mb"),
        Column("kinds", _tuple_of_json),
    ),
)
"""``conveyor_workers`` as list_workers selects it."""
