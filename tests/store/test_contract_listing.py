"""The store contract, listing jobs, and the notices listeners hear.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import asyncio

import pytest
from contract_support import (
    W1,
    NewJobFactory,
    claim,
    claim_one,
    enqueue_one,
    outcome_of,
    settle,
    wait_until,
)

from conveyor.store.base import (
    JobsAvailable,
    Notice,
    Store,
)
from conveyor.store.records import (
    JobFilter,
    JobState,
    OutcomeKind,
)


# -- listing ---------------------------------------------------------------------------------
async def test_list_jobs_filters_and_pages(store: Store, new_job: NewJobFactory) -> None:
    ids = [
        r.id
        for r in await store.enqueue(
            [
                new_job(queue=q, kind=k, tenant_id=t)
                for q, k, t in [
                    ("a", "k1", "t1"),
                    ("b", "k1", "t1"),
                    ("a", "k2", "t2"),
                    ("a", "k1", "t2"),
                ]
            ]
        )
    ]
    assert [j.id for j in await store.list_jobs(JobFilter())] == ids[::-1]
    assert [j.id for j in await store.list_jobs(JobFilter(queue="a"))] == [ids[3], ids[2], ids[0]]
    assert [j.id for j in await store.list_jobs(JobFilter(kind="k2"))] == [ids[2]]
    assert [j.id for j in await store.list_jobs(JobFilter(tenant_id="t1"))] == [ids[1], ids[0]]
    page1 = await store.list_jobs(JobFilter(limit=3))
    page2 = await store.list_jobs(JobFilter(limit=3, before_id=page1[-1].id))
    assert [j.id for j in page1 + page2] == ids[::-1]
    await claim(store, slots={"b": 1}, kinds=("k1",))
    running = await store.list_jobs(JobFilter(state=JobState.RUNNING))
    assert [j.id for j in running] == [ids[1]]


async def test_list_jobs_filters_by_creation_time(store: Store, new_job: NewJobFactory) -> None:
    [first] = await store.enqueue([new_job()])
    created = (await store.get_job(first.id)).created_at  # type: ignore[union-attr]
    [second] = await store.enqueue([new_job()])
    later = (await store.get_job(second.id)).created_at  # type: ignore[union-attr]
    everything = await store.list_jobs(JobFilter(created_after=created))
    assert [j.id for j in everything] == [second.id, first.id]
    assert await store.list_jobs(JobFilter(created_after=later + 60)) == []
    before = await store.list_jobs(JobFilter(created_before=later + 60, created_after=created))
    assert len(before) == 2
    assert await store.list_jobs(JobFilter(created_before=created)) == []


# -- notices ---------------------------------------------------------------------------------
async def test_listener_hears_enqueue_until_removed(store: Store, new_job: NewJobFactory) -> None:
    notices: list[Notice] = []
    remove = store.add_listener(notices.append)
    await enqueue_one(store, new_job(queue="mail"))
    await wait_until(lambda: JobsAvailable(frozenset({"mail"})) in notices)

    remove()
    await asyncio.sleep(0.05)
    heard = len(notices)
    await enqueue_one(store, new_job(queue="mail"))
    await asyncio.sleep(0.1)
    assert len(notices) == heard
    remove()  # twice is fine


async def test_requeueing_outcomes_publish_jobs_available(
    store: Store, new_job: NewJobFactory
) -> None:
    await enqueue_one(store, new_job())
    job = await claim_one(store)
    notices: list[Notice] = []
    store.add_listener(notices.append)
    assert await settle(store, W1, outcome_of(OutcomeKind.RELEASED, job)) == (True,)
    await wait_until(
        lambda: any(
            isinstance(n, JobsAvailable) and (n.queues is None or "default" in n.queues)
            for n in notices
        )
    )


async def test_another_instance_hears_enqueue(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    if store.dialect != "sqlite":
        pytest.skip("JobsAvailable(None) from another instance is SQLite's data_version poll")
    notices: list[Notice] = []
    peer_store.add_listener(notices.append)
    await enqueue_one(store, new_job())
    await wait_until(lambda: JobsAvailable(None) in notices, within=1.0)
