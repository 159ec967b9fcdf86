"""Small periodic services that run beside a worker's exchange loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil

from conveyor.logs import get_logger

log = get_logger("services")

_PROCESS = psutil.Process()


def rss_mb() -> float:
    """This process's resident set size in MiB."""
    return float(_PROCESS.memory_info().rss) / (1024 * 1024)


_last_rss: tuple[float, float] = (float("-inf"), 0.0)


def recent_rss_mb(max_age: float) -> float:
    """:func:`rss_mb` read at most once per ``max_age`` seconds: for a check made on every
    request, where reading ``/proc`` each time is a share of its CPU (docs/benchmarks.md)."""
    global _last_rss
    now = time.monotonic()
    at, value = _last_rss
    if now - at >= max_age:
        value = rss_mb()
        _last_rss = (now, value)
    return value


async def every(
    interval: float,
    action: Callable[[], Coroutine[Any, Any, None]],
    *,
    name: str,
    worker_id: str,
) -> None:
    """Run ``action`` every ``interval`` seconds until cancelled. A failing pass is logged
    and retried at the next tick: a side service that died silently is how jobs get stuck
    (the rescuer above all), so it must never stop on an error."""
    while True:
        try:
            await action()
        except Exception:
            log.exception("background service failed; retrying", service=name, worker_id=worker_id)
        await asyncio.sleep(interval)
