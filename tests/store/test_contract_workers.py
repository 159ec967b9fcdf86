"""The store contract, the worker registry.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.store.base import Store
from conveyor.store.records import WorkerInfo


# -- workers ---------------------------------------------------------------------------------
async def test_register_list_unregister_workers(store: Store) -> None:
    before = time.time()
    await store.register_worker(WorkerInfo("wa", "host-a", 11, {"default": 4}), lease_s=30)
    await store.register_worker(
        WorkerInfo("wb", "host-b", 22, {"q": 1}, kinds=("a.b", "c")), lease_s=30
    )
    workers = {w.id: w for w in await store.list_workers()}
    assert workers["wb"].kinds == ("a.b", "c")
    assert workers["wb"].serves("q", "c")
    assert not workers["wb"].serves("q", "d")
    assert not workers["wb"].serves("default", "c")
    assert set(workers) == {"wa", "wb"}
    wa = workers["wa"]
    assert (wa.hostname, wa.pid, wa.queues, wa.kinds) == ("host-a", 11, {"default": 4}, ())
    assert before - 1 <= wa.started_at <= wa.last_seen_at <= time.time() + 1
    assert wa.expires_at == pytest.approx(wa.last_seen_at + 30, abs=1e-3)

    await store.unregister_worker("wa")
    assert [w.id for w in await store.list_workers()] == ["wb"]
    await store.unregister_worker("wa")  # twice is fine
    await store.unregister_worker("never-registered")


async def test_heartbeat_renews_the_worker(store: Store) -> None:
    await store.register_worker(WorkerInfo("wa", "h", 1, {"default": 1}), lease_s=0.2)
    before = time.time()
    await store.heartbeat("wa", {}, 30.0, renew=True)
    after = time.time()
    await asyncio.sleep(0.25)
    [worker] = await store.list_workers()
    assert worker.expires_at >= worker.last_seen_at + 29
    assert before - 1 <= worker.last_seen_at <= after + 1
    assert worker.expires_at == pytest.approx(worker.last_seen_at + 30, abs=1e-3)


async def test_expired_worker_is_hidden_and_forgotten(store: Store) -> None:
    await store.register_worker(WorkerInfo("dead", "h", 1, {"default": 1}), lease_s=0.01)
    await store.register_worker(WorkerInfo("alive", "h", 2, {"default": 1}), lease_s=30)
    await asyncio.sleep(0.05)
    assert [w.id for w in await store.list_workers()] == ["alive"]
    await store.rescue()
    # Forgotten: a late heartbeat cannot bring the dead registration back.
    await store.heartbeat("dead", {}, 30.0, renew=True)
    assert [w.id for w in await store.list_workers()] == ["alive"]
