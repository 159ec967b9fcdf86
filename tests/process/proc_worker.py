"""Imported by worker subprocesses (``--import proc_worker``): installs the kinds of
:mod:`proc_kinds` (and their schedules) in the process-wide registry that ``conveyor worker``
runs from."""

from __future__ import annotations

from proc_kinds import KINDS

import conveyor
from conveyor.engine.periodic import add_schedule, schedules

for _kind in KINDS:
    conveyor.registry.register(_kind)
for _schedule in schedules(KINDS):
    add_schedule(_schedule)
