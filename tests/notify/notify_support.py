"""Helpers of the notify suite (importable by name, unlike conftest): settings for a
receiver on loopback, a quick retry schedule, and workers serving ``webhook.deliver`` on
the test's store in the background."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import conveyor
from conveyor.config import Settings
from conveyor.engine.retry import Backoff
from conveyor.notify import webhooks
from conveyor.store.base import Store

FAST = conveyor.WorkerConfig(
    queues={"webhooks": 4},
    lease_s=2.0,
    heartbeat_interval=0.5,
    cancel_check_interval=0.05,
    rescue_interval=0.2,
    safety_poll_interval=0.1,
    memory_check_interval=0.5,
    shutdown_grace=2.0,
)
QUICK_RETRY = Backoff(base=0.3, factor=2.0, cap=2.0, jitter=False)
"""Waits of 0.3 s, 0.6 s, 1.2 s: a retry schedule that shows within a test."""


def settings(**overrides: Any) -> Settings:
    """Settings for deliveries to a receiver on loopback (allow-listed unless overridden)."""
    values: dict[str, Any] = {
        "webhook_allow_hosts": ["127.0.0.1"],
        "webhook_timeout": 3.0,
        "webhook_max_attempts": 4,
    }
    values.update(overrides)
    return Settings(**values)


async def eventually(
    condition: Callable[[], Awaitable[Any] | Any], *, timeout: float = 10.0
) -> Any:
    """Poll ``condition`` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class Delivering:
    """A worker serving ``webhook.deliver`` on the test's store with ``settings``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._running: list[tuple[conveyor.Worker, asyncio.Task[None]]] = []
        self._deliverers: list[webhooks.WebhookDeliverer] = []
        self.kinds = conveyor.Registry()

    def start(self, config: Settings, *, backoff: Backoff = QUICK_RETRY) -> conveyor.Worker:
        self.kinds = conveyor.Registry()
        self._deliverers.append(webhooks.register(self.kinds, self.store, config, backoff=backoff))
        worker = conveyor.Worker(self.store, FAST, kinds=self.kinds)
        self._running.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def close(self) -> None:
        for worker, task in self._running:
            worker.stop()
            worker.stop()
            await asyncio.wait_for(task, 10)
        for deliverer in self._deliverers:
            await deliverer.aclose()
