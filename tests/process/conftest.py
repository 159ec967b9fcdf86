"""Fixtures of the process suite: real worker processes on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_harness import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A database, an output folder for the handlers and a way to start workers; every
    worker still running at the end is killed."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()
