"""Small periodic services that run beside a worker's exchange loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import psutil

from conveyor.logs import get_logger

log = get_logger("services")

_PROCESS = psutil.Process()


def rss_mb() -> float:
    """This process's resident set size in MiB."""
    return float(_PROCESS.memory_info().rss) / (1024 * 1024)


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
