"""Rows decoded from one table of columns: each column's name next to its decoder.

A store lists, once, the columns its statements select for a record (in select order,
which is the record's field order: checked when the table is made) with how the value a
row holds becomes the field, so the SQL's column list, the decoders and the fields cannot
drift apart silently, and nothing counts ``row[0]..row[22]`` by hand. The decoder is
generated from the table once, as the plain positional call one would write by hand:
every claimed job is decoded, and a loop over the columns would be per-job work on the
claim path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

import orjson

from conveyor.store.records import ErrorEntry

R = TypeVar("R")


R_co = TypeVar("R_co", covariant=True)


class Row(Protocol):
    """A driver's row: anything indexable by position (asyncpg's Record, sqlite3's tuple)."""

    def __getitem__(self, index: int, /) -> Any: ...


class Decode(Protocol[R_co]):
    """``decode(row, offset=0)``: the record whose columns start at ``offset``."""

    def __call__(self, row: Row, offset: int = 0, /) -> R_co: ...


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
        self.decode: Decode[R] = self._build_row_decoder()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def check(self, names: Sequence[str], where: str) -> None:
        """Raise ValueError unless ``names`` (a statement's column list) are these."""
        if tuple(names) != self.names:
            raise ValueError(f"{where}: columns {tuple(names)} are not {self.names}")

    def _build_row_decoder(self) -> Decode[R]:
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
        return cast(Decode[R], _compile("decode", "r, o=0", f"record({', '.join(values)})", scope))

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
    exec(compile(source, f"<conveyor.store.columns {name}>", "exec"), scope)
    function: Callable[..., Any] = scope[name]
    function.__doc__ = source
    return function


def json_or_none(text: str | None) -> Any:
    """A JSON column that may be NULL."""
    return None if text is None else orjson.loads(text)


def errors_from_json(text: str) -> tuple[ErrorEntry, ...]:
    """The ``errors`` column: a JSON array of the attempts' errors."""
    return tuple(ErrorEntry.from_json(e) for e in orjson.loads(text))


def tuple_from_json(text: str) -> tuple[Any, ...]:
    """A JSON array column as a tuple."""
    return tuple(orjson.loads(text))


def column_list(sql: str) -> list[str]:
    """The names in a comma-separated column list (an SQL part), comments left out and
    table prefixes (``r.``) dropped."""
    text = " ".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [name.strip().rsplit(".", 1)[-1] for name in text.split(",") if name.strip()]
