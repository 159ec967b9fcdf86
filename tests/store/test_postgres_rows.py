"""PostgreSQL rows are decoded from one column table per record: the table is checked
against the record's fields, and the handoff notice's SQL carries the columns the table
decodes it by."""

from __future__ import annotations

import re

from conveyor.store.postgres.rows import HANDOFF_COLUMNS, JOBS
from conveyor.store.records import JOB_COLUMNS
from conveyor.store.sqlfile import load_parts


def test_the_job_table_is_the_job_columns() -> None:
    assert tuple(c.name for c in JOBS.columns) == JOB_COLUMNS
    assert JOBS.width == len(JOB_COLUMNS)


def test_the_handoff_notice_carries_the_columns_it_is_decoded_by() -> None:
    part = load_parts("conveyor.store.postgres", "enqueue.sql")["notify_or_hand_off"]
    whole = re.search(r"\(SELECT 'h:' \|\| json_build_array\((.*?)\)::text\) AS h", part, re.DOTALL)
    assert whole is not None, part
    carried = [
        re.sub(r"^extract\(epoch FROM (.*)\)$", r"\1", item.strip()).removeprefix("ins.")
        for item in whole.group(1).split(",")
    ]
    assert carried == list(HANDOFF_COLUMNS)
    short = re.search(r"ELSE 'h:' \|\| json_build_array\((.*?)\)::text", part)
    assert short is not None, part
    assert [c.strip().removeprefix("ins.") for c in short.group(1).split(",")] == list(
        HANDOFF_COLUMNS[:3]
    )
