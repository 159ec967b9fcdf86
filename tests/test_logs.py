"""``conveyor.logs``: the logger :func:`get_logger` returns is the filtering bound logger its
type says, configured or not."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from conveyor.logs import configure_logging, get_logger, is_enabled


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_a_configured_logger_filters_by_level(restore_structlog: None) -> None:
    configure_logging("WARNING", "console")
    log = get_logger("test").bind(job_id=1)
    assert not is_enabled(log, logging.INFO)
    assert is_enabled(log, logging.WARNING)
    assert log.is_enabled_for(logging.ERROR)


def test_a_logger_carries_its_component_and_bound_values() -> None:
    with capture_logs() as lines:
        get_logger("test").bind(job_id=7).info("hello", queue="q")
    assert lines == [
        {"component": "test", "job_id": 7, "queue": "q", "event": "hello", "log_level": "info"}
    ]
