"""A worker's live events (``job.started``, ``job.progress``): never stored, published
to the listening stores beside the exchange, never in its way."""

from __future__ import annotations

import asyncio
import time

from conveyor.logs import get_logger
from conveyor.store.base import EventLog, StoreError
from conveyor.store.records import Event, EventType, Job, Progress

log = get_logger("worker")


class LivePublisher:
    """Collects live events and hands them to :meth:`EventLog.publish_live` in batches,
    one call in flight at a time: the worker's loop adds and goes on, and what comes while
    a call is under way goes in the next one. A failed publication is dropped (these
    events are live only; the durable ones carry what matters)."""

    def __init__(self, store: EventLog, worker_id: str, *, enabled: bool = True) -> None:
        self._store = store
        self._worker_id = worker_id
        self.enabled = enabled
        self._batch: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    def started(self, job: Job) -> None:
        """``job`` started running here."""
        if self.enabled:
            self._add(
                Event(
                    None,
                    job.tenant_id,
                    EventType.STARTED,
                    job.id,
                    job.kind,
                    job.queue,
                    job.attempt,
                    {"worker": self._worker_id},
                    time.time(),
                )
            )

    def progress(self, job: Job, report: Progress) -> None:
        """``job`` reported progress."""
        if self.enabled:
            self._add(
                Event(
                    None,
                    job.tenant_id,
                    EventType.PROGRESS,
                    job.id,
                    job.kind,
                    job.queue,
                    job.attempt,
                    {"fraction": report.fraction, "message": report.message},
                    time.time(),
                )
            )

    def _add(self, event: Event) -> None:
        self._batch.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish(), name="conveyor-live-events"
            )

    async def _publish(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    await self._store.publish_live(batch)
                except StoreError as exc:
                    log.debug("live events not published", error=str(exc), dropped=len(batch))
        finally:
            self._task = None

    async def close(self) -> None:
        """Wait for the call under way (at the worker's stop)."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
