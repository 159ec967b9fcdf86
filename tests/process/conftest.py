"""Fixtures of the process suite: real worker processes on a temporary SQLite file, or on
a fresh PostgreSQL database of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_harness import Harness

from pg_server import PgTestServer


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A database, an output folder for the handlers and a way to start workers; every
    worker still running at the end is killed."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def pg_harness(tmp_path: Path, pg_server: PgTestServer) -> Iterator[Harness]:
    """Like ``harness``, on a fresh migrated PostgreSQL database of this test's own (not
    the session database the store tests empty before each test); dropped with the
    session's."""
    h = Harness(tmp_path, pg_server.create_database())
    try:
        yield h
    finally:
        h.close()
