"""Structured logging: JSON lines in production, readable lines on a terminal.

Every line about a job carries ``job_id``, ``queue``, ``kind``, ``tenant`` and, when the
job came from an HTTP request, ``request_id``: loggers are bound with them, never
formatted into the message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TypeAlias

import orjson
import structlog
from structlog.typing import FilteringBoundLogger

Logger: TypeAlias = FilteringBoundLogger
"""What :func:`get_logger` returns: structlog's filtering bound logger, whose ``debug`` ..
``exception`` take an event and key-value pairs, and whose ``bind`` returns another."""

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


def configure_logging(
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
) -> None:
    """Configure structlog for the process; call once at start-up (the CLI does)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if use_json:
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        factory: Any = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Logger:
    """A structlog logger tagged with the component ``name``."""
    logger: Logger = structlog.get_logger(component=name)
    return logger


def is_enabled(logger: Logger, level: int) -> bool:
    """Whether ``logger`` writes lines of ``level``: True for a logger that cannot tell
    (a wrapper class other than structlog's filtering one)."""
    check = getattr(logger, "is_enabled_for", None)
    return True if check is None else bool(check(level))
