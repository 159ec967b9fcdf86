"""Workloads: the job handlers that ship with Conveyor (kinds registered in
:mod:`conveyor.engine.kinds`).

``conveyor.workloads.video`` and ``conveyor.workloads.qa`` are the QuDemo seed's kinds; the
HTTP API always loads them (its seed routes need them). ``conveyor.workloads.demo`` holds
the README tour's demo kinds (``make run`` imports it). Importing this package registers
nothing by itself.
"""

from __future__ import annotations

import importlib

from conveyor.engine.kinds import Registry

BUILTIN_MODULES = ("conveyor.workloads.video", "conveyor.workloads.qa")
"""The kinds every API process loads."""

MODULES = ("conveyor.workloads.demo", *BUILTIN_MODULES)
"""Every module of this package, as ``--import`` and ``CONVEYOR_IMPORTS`` name them."""

QUEUE_LIMITS = {"video": 2, "qa": 10}
"""Per-worker concurrency of the built-in kinds' queues: the seed's limits
(QUEUE_MAX_CONCURRENT_VIDEOS, QUEUE_MAX_CONCURRENT_QA)."""


def register_builtin(registry: Registry) -> None:
    """Register the built-in kinds in ``registry`` (a no-op for those already there)."""
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        module.register(registry)
