"""What a worker process runs for the event log: the delivery kinds (``webhook.deliver``,
``email.send``) on their queues, and the dispatcher that enqueues them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from conveyor.config import Settings
from conveyor.engine.kinds import Registry
from conveyor.engine.periodic import add_schedule, schedules
from conveyor.notify import email, webhooks
from conveyor.notify.dispatch import Dispatcher
from conveyor.store.base import Store

NOTIFY_QUEUES = (webhooks.QUEUE, email.QUEUE)
"""The queues the delivery jobs run on: every worker serves them beside its own."""


def worker_kinds(kinds: Registry) -> Registry:
    """A registry of ``kinds`` (and their schedules) for a worker, to which the delivery
    kinds are added: the API's own registry never holds them, so no one can submit a
    delivery as a request."""
    copy = Registry()
    for kind in kinds:
        copy.register(kind)
    for schedule in schedules(kinds):
        add_schedule(schedule, copy)
    return copy


def with_notify_queues(queues: dict[str, int], settings: Settings) -> dict[str, int]:
    """``queues`` plus the delivery queues (at ``CONVEYOR_CONCURRENCY``) where not named;
    unchanged with events off (nothing would enqueue deliveries)."""
    if not settings.events:
        return dict(queues)
    return {**{q: settings.concurrency for q in NOTIFY_QUEUES}, **queues}


@dataclass(slots=True)
class Notify:
    """The delivery kinds registered for one store, and the dispatcher to run."""

    dispatcher: Dispatcher
    deliverer: webhooks.WebhookDeliverer

    async def aclose(self) -> None:
        await self.deliverer.aclose()


def install(registry: Registry, store: Store, settings: Settings) -> Notify | None:
    """Register the delivery kinds in ``registry`` (a worker's: see :func:`worker_kinds`)
    bound to ``store``; the dispatcher to run beside the worker. None with events off."""
    if not settings.events:
        return None
    deliverer = webhooks.register(registry, store, settings)
    email.register(registry, store, settings)
    planners = (webhooks.WebhookDispatch(store, settings), email.EmailDispatch(store, settings))
    return Notify(
        Dispatcher(
            store,
            planners,
            poll_interval=settings.event_poll_interval,
            ignore_queues=NOTIFY_QUEUES,
        ),
        deliverer,
    )


@contextlib.asynccontextmanager
async def dispatching(notify: Notify | None) -> AsyncIterator[None]:
    """Run the dispatcher while the block runs (a worker's life); then close the
    deliverer's HTTP client."""
    if notify is None:
        yield
        return
    task = asyncio.create_task(notify.dispatcher.run(), name="conveyor-dispatch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await notify.aclose()
