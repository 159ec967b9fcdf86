"""The request verbs of the store contract: a request and its job in one transaction,
idempotency keys, listing, and queue positions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from conveyor.store.base import Store
from conveyor.store.records import (
    ClaimRequest,
    JobState,
    NewJob,
    NewRequest,
    Outcome,
    OutcomeKind,
    RequestFilter,
)

# Not imported from conftest: with one conftest.py per test folder, ``conftest`` names
# whichever was imported first (tests/process's, in a full run).
NewJobFactory = Callable[..., NewJob]


def _request(new_job: NewJobFactory, key: str | None = None, **job: object) -> NewRequest:
    return NewRequest(
        kind="test.noop",
        input={"doctor": "Ada"},
        caller_id="caller-1",
        job=new_job(**job),
        idempotency_key=key,
        http_request_id="req-abc",
    )


async def test_a_request_is_created_with_its_job(store: Store, new_job: NewJobFactory) -> None:
    request, created = await store.create_request(_request(new_job))
    assert created
    assert request.input == {"doctor": "Ada"}
    assert request.job.state is JobState.QUEUED
    assert request.http_request_id == "req-abc"
    assert await store.get_job(request.job.id) == request.job
    assert await store.get_request(request.id, "default") == request


async def test_the_same_idempotency_key_returns_the_same_request(
    store: Store, new_job: NewJobFactory
) -> None:
    first, created = await store.create_request(_request(new_job, key="k1"))
    again, created_again = await store.create_request(_request(new_job, key="k1"))
    assert created
    assert not created_again
    assert again.id == first.id
    jobs = await store.list_requests(RequestFilter(tenant_id="default"))
    assert [r.id for r in jobs] == [first.id]


async def test_keys_are_per_caller_and_per_tenant(store: Store, new_job: NewJobFactory) -> None:
    a, _ = await store.create_request(_request(new_job, key="k"))
    other_caller = NewRequest("test.noop", {}, "caller-2", new_job(), idempotency_key="k")
    b, created_b = await store.create_request(other_caller)
    other_tenant = NewRequest(
        "test.noop", {}, "caller-1", new_job(tenant_id="t2"), idempotency_key="k"
    )
    c, created_c = await store.create_request(other_tenant)
    assert created_b
    assert created_c
    assert len({a.id, b.id, c.id}) == 3


async def test_racing_requests_with_one_key_create_one(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    results = await asyncio.gather(
        *(
            s.create_request(_request(new_job, key="race"))
            for s in (store, peer_store, store, peer_store)
        )
    )
    assert len({request.id for request, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    listed = await store.list_requests(RequestFilter(tenant_id="default"))
    assert len(listed) == 1


async def test_another_tenant_cannot_read_a_request(store: Store, new_job: NewJobFactory) -> None:
    request, _ = await store.create_request(_request(new_job))
    assert await store.get_request(request.id, "someone-else") is None
    assert await store.list_requests(RequestFilter(tenant_id="someone-else")) == []


async def test_list_requests_filters_and_pages(store: Store, new_job: NewJobFactory) -> None:
    made = [(await store.create_request(_request(new_job)))[0] for _ in range(5)]
    other = NewRequest("other.kind", {}, "caller-1", new_job(kind="other.kind"))
    odd, _ = await store.create_request(other)
    everything = await store.list_requests(RequestFilter(tenant_id="default"))
    assert [r.id for r in everything] == [odd.id, *[r.id for r in reversed(made)]]
    page = await store.list_requests(RequestFilter(tenant_id="default", limit=2))
    assert [r.id for r in page] == [odd.id, made[-1].id]
    nxt = await store.list_requests(
        RequestFilter(tenant_id="default", limit=2, before_id=page[-1].id)
    )
    assert [r.id for r in nxt] == [made[-2].id, made[-3].id]
    by_kind = await store.list_requests(RequestFilter(tenant_id="default", kind="other.kind"))
    assert [r.id for r in by_kind] == [odd.id]
    claimed = await store.settle_and_claim([], [], "w", ClaimRequest("w", {"default": 1}, 30))
    job = claimed.claimed[0]
    await store.settle_and_claim(
        [Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue, result={"ok": 1})],
        [],
        "w",
        None,
    )
    done = await store.list_requests(RequestFilter(tenant_id="default", state=JobState.COMPLETED))
    assert [r.job.id for r in done] == [job.id]
    assert done[0].job.result == {"ok": 1}
    future = await store.list_requests(
        RequestFilter(tenant_id="default", created_after=time.time() + 60)
    )
    assert future == []
    past = await store.list_requests(
        RequestFilter(tenant_id="default", created_before=time.time() + 60)
    )
    assert len(past) == 6


async def test_queue_position_counts_the_jobs_ahead(store: Store, new_job: NewJobFactory) -> None:
    low = [(await store.create_request(_request(new_job, priority=3)))[0] for _ in range(3)]
    high, _ = await store.create_request(_request(new_job, priority=1))
    elsewhere, _ = await store.create_request(_request(new_job, queue="other"))
    assert [await store.queue_position(r.job) for r in low] == [1, 2, 3]
    assert await store.queue_position(high.job) == 0
    assert await store.queue_position(elsewhere.job) == 0


async def test_pruning_a_job_prunes_its_request(store: Store, new_job: NewJobFactory) -> None:
    request, _ = await store.create_request(_request(new_job))
    claimed = await store.settle_and_claim([], [], "w", ClaimRequest("w", {"default": 1}, 30))
    job = claimed.claimed[0]
    await store.settle_and_claim(
        [Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue)], [], "w", None
    )
    await asyncio.sleep(0.05)
    assert await store.prune(0.0) == 1
    assert await store.get_request(request.id, "default") is None
    assert await store.list_requests(RequestFilter(tenant_id="default")) == []
