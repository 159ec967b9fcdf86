"""Rows decoded from one table of columns: each column's name next to its decoder.

A store lists, once, the columns it selects for a row type (in select order) with what
turns each value into the field (``None``: taken as the driver gives it). The table is
checked against the dataclass it builds, field by field, when it is made, so the SQL's
column list, the decoders and the fields cannot drift apart silently, and nothing counts
``row[0]..row[22]`` by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Decoder = Callable[[Any], Any] | None


class Columns(Generic[T]):
    """The columns of ``build``'s rows. ``build`` is a dataclass whose first fields are
    the columns, in order; fields after them are passed to :meth:`decode` as ``extra``.

    Decoding copies the row once and converts only the columns that have a decoder,
    then builds positionally (keyword arguments cost several times as much, and every
    claimed job is decoded)."""

    __slots__ = ("_build", "_convert", "names", "width")

    def __init__(self, build: type[T], columns: Sequence[tuple[str, Decoder]]) -> None:
        self.names = tuple(name for name, _ in columns)
        fields = tuple(f.name for f in dataclasses.fields(build))  # type: ignore[arg-type]
        if fields[: len(self.names)] != self.names:
            raise ValueError(
                f"columns {self.names} are not the first fields of {build.__name__} "
                f"{fields}, in order"
            )
        self.width = len(self.names)
        self._convert = tuple((i, f) for i, (_, f) in enumerate(columns) if f is not None)
        self._build: Callable[..., T] = build

    def decode(self, row: Sequence[Any], offset: int = 0, *extra: Any) -> T:
        """The row's columns from ``offset`` on, decoded, then ``extra`` fields."""
        values = list(row[offset : offset + self.width] if offset or extra else row)
        for index, decode in self._convert:
            values[index] = decode(values[index])
        return self._build(*values, *extra)

    def check(self, names: Sequence[str], where: str) -> None:
        """Raise ValueError unless ``names`` (a statement's column list) are these."""
        if tuple(names) != self.names:
            raise ValueError(f"{where}: columns {tuple(names)} are not {self.names}")


def column_list(sql: str) -> list[str]:
    """The names in a comma-separated column list (an SQL part), comments left out and
    table prefixes (``r.``) dropped."""
    text = " ".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [name.strip().rsplit(".", 1)[-1] for name in text.split(",") if name.strip()]
