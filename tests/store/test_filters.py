"""The list builder: conditions picked per filter, joined, compiled once per shape."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import pytest

from conveyor.store.filters import ListQuery
from conveyor.store.records import JobFilter, JobState, RequestFilter


@dataclass(frozen=True)
class Flt:
    state: JobState | None = None
    name: str | None = None
    after: float | None = None
    limit: int = 10


PARTS = {
    "things": "SELECT id FROM t",
    "things_where_state": "state = :state",
    "things_where_name": "name = :name",
    "things_where_after": "at >= to_timestamp(:after)",
    "things_tail": "ORDER BY id DESC LIMIT :limit",
}


def test_an_empty_filter_binds_only_the_limit() -> None:
    statement, args = ListQuery(PARTS, "things", Flt, "$").statement(Flt())
    assert statement.sql == "SELECT id FROM t\nORDER BY id DESC LIMIT $1"
    assert args == (10,)


def test_set_fields_become_conditions_in_field_order_numbered_in_the_dialects_style() -> None:
    query = ListQuery(PARTS, "things", Flt, "$")
    statement, args = query.statement(Flt(after=5.0, state=JobState.QUEUED, limit=3))
    assert statement.sql == (
        "SELECT id FROM t\nWHERE state = $1\n  AND at >= to_timestamp($2)\n"
        "ORDER BY id DESC LIMIT $3"
    )
    # An enum binds by its value, a plain str.
    assert args == ("queued", 5.0, 3)
    assert type(args[0]) is str
    assert ListQuery(PARTS, "things", Flt, "?").statement(Flt(name="x"))[0].sql == (
        "SELECT id FROM t\nWHERE name = ?1\nORDER BY id DESC LIMIT ?2"
    )


def test_each_shape_is_compiled_once() -> None:
    query = ListQuery(PARTS, "things", Flt, "?")
    first, _ = query.statement(Flt(name="a"))
    again, args = query.statement(Flt(name="b", limit=2))
    other, _ = query.statement(Flt(state=JobState.FAILED))
    assert again is first
    assert args == ("b", 2)
    assert other is not first


def test_a_missing_part_is_named_when_the_list_is_built() -> None:
    parts = {k: v for k, v in PARTS.items() if k != "things_where_after"}
    with pytest.raises(ValueError, match=r"'things' of Flt: no part things_where_after"):
        ListQuery(parts, "things", Flt, "?")


def test_sqlite_runs_every_shape() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT, name TEXT, at REAL)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [(1, "queued", "a", 1.0), (2, "failed", "a", 2.0), (3, "queued", "b", 3.0)],
    )
    parts = {**PARTS, "things_where_after": "at >= :after"}
    query = ListQuery(parts, "things", Flt, "?")

    def ids(flt: Flt) -> list[int]:
        statement, args = query.statement(flt)
        return [row[0] for row in conn.execute(statement.sql, args)]

    assert ids(Flt()) == [3, 2, 1]
    assert ids(Flt(state=JobState.QUEUED)) == [3, 1]
    assert ids(Flt(state=JobState.QUEUED, name="a")) == [1]
    assert ids(Flt(after=2.0, limit=1)) == [3]


@pytest.mark.parametrize("filter_type", [JobFilter, RequestFilter])
def test_every_field_of_the_store_filters_but_limit_is_a_condition(filter_type: type) -> None:
    fields = [name for name in filter_type.__dataclass_fields__ if name != "limit"]
    parts = {"l": "SELECT 1", "l_tail": "LIMIT :limit"}
    parts |= {f"l_where_{name}": f"{name} = :{name}" for name in fields}
    assert ListQuery(parts, "l", filter_type, "?")
