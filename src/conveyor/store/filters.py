"""List statements built from filters: one builder for every store and every list.

A list's SQL lives in its dialect's ``.sql`` file as parts: ``-- part: NAME`` (the
statement up to its ``WHERE``), ``-- part: NAME_where_FIELD`` (the condition for each
field of the filter; its parameter is named after the field) and ``-- part: NAME_tail``
(the order and ``LIMIT :limit``). The builder only picks the conditions of the fields
that are set and joins them with ``AND``; each shape of filter is compiled once, in the
store's placeholder style, and then reused.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from conveyor.store.sqlfile import Placeholder, Statement, compile_sql

LIMIT = "limit"
"""The one field bound in every shape: the tail's ``LIMIT :limit``."""


class ListQuery:
    """The statements of one list (``NAME``) for filters of one dataclass type.

    Every field of the filter but ``limit`` is a condition, used when the field is not
    None; an enum is bound by its value."""

    __slots__ = ("_cache", "_fields", "_head", "_name", "_placeholder", "_tail", "_where")

    def __init__(
        self, parts: Mapping[str, str], name: str, filter_type: type, placeholder: Placeholder
    ) -> None:
        fields = tuple(f.name for f in dataclasses.fields(filter_type) if f.name != LIMIT)
        needed = [name, *(f"{name}_where_{f}" for f in fields), f"{name}_tail"]
        missing = [part for part in needed if part not in parts]
        if missing:
            raise ValueError(
                f"list {name!r} of {filter_type.__name__}: no part {', '.join(missing)} "
                "in the store's .sql file; write one '-- part:' for each"
            )
        self._name = name
        self._placeholder = placeholder
        self._fields = fields
        self._head = parts[name]
        self._where = {f: parts[f"{name}_where_{f}"] for f in fields}
        self._tail = parts[f"{name}_tail"]
        self._cache: dict[tuple[str, ...], Statement] = {}

    def statement(self, flt: object) -> tuple[Statement, tuple[Any, ...]]:
        """The statement for ``flt``'s shape and its arguments."""
        values = {f: _bindable(getattr(flt, f)) for f in self._fields}
        shape = tuple(f for f in self._fields if values[f] is not None)
        statement = self._cache.get(shape)
        if statement is None:
            statement = self._cache[shape] = self._compile(shape)
        values[LIMIT] = getattr(flt, LIMIT)
        return statement, statement.args(values)

    def _compile(self, shape: tuple[str, ...]) -> Statement:
        sql = self._head
        if shape:
            sql += "\nWHERE " + "\n  AND ".join(self._where[f] for f in shape)
        sql += "\n" + self._tail
        name = "_".join((self._name, *shape)) if shape else self._name
        return compile_sql(name, sql, self._placeholder)


def _bindable(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value
