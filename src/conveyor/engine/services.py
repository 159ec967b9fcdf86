"""Small periodic services that run beside a worker's exchange loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil

from conveyor.engine.exchange import IMMEDIATE_RETRIES
from conveyor.logs import get_logger
from conveyor.store.base import TransactionRolledBack

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
    (the rescuer above all), so it must never stop on an error. A pass the database
    rolled back to break a deadlock or a serialization conflict between workers
    (:class:`TransactionRolledBack`) runs again at once, up to
    :data:`~conveyor.engine.exchange.IMMEDIATE_RETRIES` times in a row, as the exchange's."""
    rolled_back = 0
    while True:
        try:
            await action()
        except Exception as exc:
            if isinstance(exc, TransactionRolledBack) and rolled_back < IMMEDIATE_RETRIES:
                rolled_back += 1
                log.warning(
                    "background service rolled back by the database, running it again",
                    service=name,
                    worker_id=worker_id,
                    error=str(exc),
                    retry=rolled_back,
                    of=IMMEDIATE_RETRIES,
                )
                continue
            log.exception("background service failed; retrying", service=name, worker_id=worker_id)
        rolled_back = 0
        await asyncio.sleep(interval)
