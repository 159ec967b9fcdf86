"""Job kinds that ship with Conveyor.

``conveyor.kinds.video`` and ``conveyor.kinds.qa`` are the QuDemo seed's kinds; the HTTP
API always loads them (its seed routes need them). ``conveyor.kinds.demo`` holds the
README tour's demo kinds. Importing this package registers nothing by itself.
"""

from __future__ import annotations

import importlib

from conveyor.engine.kinds import Registry

BUILTIN_MODULES = ("conveyor.kinds.video", "conveyor.kinds.qa")
"""The kinds every API process loads."""

QUEUE_LIMITS = {"video": 2, "qa": 10}
"""Per-worker concurrency of the built-in kinds' queues: the seed's limits
(QUEUE_MAX_CONCURRENT_VIDEOS, QUEUE_MAX_CONCURRENT_QA)."""


def register_builtin(registry: Registry) -> None:
    """Register the built-in kinds in ``registry`` (a no-op for those already there)."""
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        module.register(registry)
