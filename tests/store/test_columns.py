"""Rows decoded from one column table, checked against the dataclass it builds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conveyor.store.columns import Columns, column_list
from conveyor.store.sqlite import rows
from conveyor.store.sqlite.queries import ordered


@dataclass
class Pair:
    a: int
    b: str
    c: object = None


def test_only_columns_with_a_decoder_are_converted_and_extra_fields_follow() -> None:
    columns = Columns(Pair, [("a", None), ("b", str.upper)])
    assert columns.decode((1, "x")) == Pair(1, "X")
    assert columns.decode((0, 0, 7, "y", "rest"), 2, "extra") == Pair(7, "Y", "extra")


def test_columns_out_of_the_dataclass_order_are_refused() -> None:
    with pytest.raises(ValueError, match="not the first fields of Pair"):
        Columns(Pair, [("b", None), ("a", None)])


def test_a_column_list_drops_comments_and_prefixes() -> None:
    assert column_list("-- note\nr.id, r.kind,\n  j.* -- the job\n") == ["id", "kind", "*"]


def test_the_sqlite_tables_match_their_statements() -> None:
    # Checked at import too; here so that a failure names itself.
    assert rows.JOB.width == 23
    assert rows.WORKER.names[-1] == "kinds"


def test_a_statement_bound_per_row_must_take_its_parameters_in_the_order_given() -> None:
    assert ordered("count_running", "queue")
    with pytest.raises(ValueError, match=r"'release' takes \('id', 'attempt', 'worker_id'\)"):
        ordered("release", "attempt", "id", "worker_id")
