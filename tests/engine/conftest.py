"""Fixtures of the engine suite: a private kind registry, clients and running workers.

The ``store`` and ``peer_store`` fixtures come from ``tests/conftest.py`` (a fresh store of
every kind; ``peer_store`` is a second instance on the same database, as another process
would see it). Each test gets its own :class:`conveyor.Registry`, so kinds never leak from
one test to the next.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import conveyor
from conveyor.store.base import Store

FAST: dict[str, Any] = {
    "lease_s": 1.0,
    "heartbeat_interval": 0.3,
    "cancel_check_interval": 0.05,
    "rescue_interval": 0.1,
    "safety_poll_interval": 0.2,
    "memory_check_interval": 0.05,
    "shutdown_grace": 5.0,
}
"""Short intervals, so timing behaviour shows within a fraction of a second."""

Condition = Callable[[], Awaitable[Any] | Any]


async def _eventually(condition: Condition, *, timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` (sync or async) until it returns a truthy value, which is returned;
    fail the test if that does not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class Workers:
    """Builds workers on the test's store and registry with fast settings, their test
    signals on (``worker.signals``, see ``conveyor.engine.signals``), and stops every
    worker it started when the test ends."""

    def __init__(self, store: Store, kinds: conveyor.Registry) -> None:
        self.store = store
        self.kinds = kinds
        self._tasks: dict[conveyor.Worker, asyncio.Task[None]] = {}

    def make(self, *, store: Any = None, **config: Any) -> conveyor.Worker:
        settings = {**FAST, **config}
        worker = conveyor.Worker(
            store if store is not None else self.store,
            conveyor.WorkerConfig(**settings),
            kinds=self.kinds,
        )
        worker.signals.enable()
        return worker

    async def burst(self, **config: Any) -> conveyor.Worker:
        """Run a worker until no due job is left and nothing runs."""
        worker = self.make(**config)
        await asyncio.wait_for(worker.run(burst=True), 10)
        return worker

    def start(self, worker: conveyor.Worker | None = None, **config: Any) -> conveyor.Worker:
        """Start serving in the background; see :meth:`stop`."""
        worker = worker if worker is not None else self.make(**config)
        self._tasks[worker] = asyncio.create_task(worker.run())
        return worker

    async def start_idle(
        self, worker: conveyor.Worker | None = None, **config: Any
    ) -> conveyor.Worker:
        """Start serving in the background and return once the worker has made its first
        pass (registered, listening, claimed) and found nothing more to do."""
        worker = worker if worker is not None else self.make(**config)
        first_idle = worker.signals.idle.wait()
        self.start(worker)
        await first_idle
        return worker

    def task(self, worker: conveyor.Worker) -> asyncio.Task[None]:
        return self._tasks[worker]

    async def stop(self, worker: conveyor.Worker, *, timeout: float = 10.0) -> None:
        """Ask ``worker`` to stop (graceful) and wait until its ``run`` returned."""
        worker.stop()
        await asyncio.wait_for(self._tasks.pop(worker), timeout)

    async def close(self) -> None:
        for worker, task in list(self._tasks.items()):
            if not task.done():
                worker.stop()
                worker.stop()  # the second call hands running jobs back at once
            await asyncio.wait_for(task, 10)
        self._tasks.clear()


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    """``await eventually(condition, timeout=5)``: poll until ``condition()`` is truthy."""
    return _eventually


@pytest.fixture
def kinds() -> conveyor.Registry:
    return conveyor.Registry()


@pytest.fixture
def client(store: Store, kinds: conveyor.Registry) -> conveyor.Client:
    return conveyor.Client(store, kinds=kinds)


@pytest.fixture
def peer_client(peer_store: Store, kinds: conveyor.Registry) -> conveyor.Client:
    """A client on a second store instance: another process's view of the database."""
    return conveyor.Client(peer_store, kinds=kinds)


@pytest.fixture
async def workers(store: Store, kinds: conveyor.Registry) -> AsyncIterator[Workers]:
    harness = Workers(store, kinds)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
def wait_job(
    client: conveyor.Client,
) -> Callable[..., Awaitable[conveyor.Job]]:
    """``await wait_job(job_id, predicate, timeout=5)``: the job once ``predicate(job)``."""

    async def wait(
        job_id: int, predicate: Callable[[conveyor.Job], bool], *, timeout: float = 5.0
    ) -> conveyor.Job:
        async def check() -> conveyor.Job | None:
            job = await client.get(job_id)
            return job if predicate(job) else None

        result: conveyor.Job = await _eventually(check, timeout=timeout)
        return result

    return wait


@pytest.fixture
def wait_state(
    wait_job: Callable[..., Awaitable[conveyor.Job]],
) -> Callable[..., Awaitable[conveyor.Job]]:
    """``await wait_state(job_id, "completed", timeout=5)``: the job once in that state."""

    async def wait(job_id: int, state: str, *, timeout: float = 5.0) -> conveyor.Job:
        return await wait_job(job_id, lambda job: job.state == state, timeout=timeout)

    return wait
