"""What a worker process adds for the event log: a registry of its own (the kinds and their
schedules, then the delivery kinds), the delivery queues beside its own."""

from __future__ import annotations

from typing import Any

import conveyor
from conveyor.engine.periodic import schedules
from conveyor.notify.service import NOTIFY_QUEUES, install, with_notify_queues, worker_kinds
from conveyor.store.base import Store


def test_a_worker_s_registry_keeps_the_kinds_and_their_schedules() -> None:
    kinds = conveyor.Registry()

    @conveyor.periodic("*/5 * * * * *", "svc.tick", registry=kinds)
    async def tick(ctx: conveyor.JobContext, payload: Any) -> None: ...

    copy = worker_kinds(kinds)
    assert copy.names() == ["svc.tick"]
    assert [s.kind for s in schedules(copy)] == ["svc.tick"]
    assert copy is not kinds


async def test_the_delivery_kinds_go_to_the_worker_s_registry_only(store: Store) -> None:
    kinds = conveyor.Registry()
    served = worker_kinds(kinds)
    notify = install(served, store, conveyor.Settings())
    assert notify is not None
    try:
        assert set(served.names()) == {"webhook.deliver", "email.send"}
        assert kinds.names() == []
    finally:
        await notify.aclose()
    assert install(conveyor.Registry(), store, conveyor.Settings(events=False)) is None


def test_workers_serve_the_delivery_queues_beside_their_own() -> None:
    settings = conveyor.Settings(concurrency=7)
    queues = with_notify_queues({"video": 2, "email": 3}, settings)
    assert queues == {"video": 2, "email": 3, "webhooks": 7}
    assert set(NOTIFY_QUEUES) <= set(queues)
    assert with_notify_queues({"video": 2}, conveyor.Settings(events=False)) == {"video": 2}
