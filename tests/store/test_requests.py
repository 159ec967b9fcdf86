"""The request verbs of the store contract: a request and its job in one transaction,
idempotency keys, listing, and queue positions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from conveyor.store.base import Store
from conveyor.store.records import (
    ClaimRequest,
    JobFilter,
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
    stored = await store.create_request(_request(new_job))
    request = stored.request
    assert stored.created
    assert stored.queue_position == 0
    assert request.input == {"doctor": "Ada"}
    assert request.job.state is JobState.QUEUED
    assert request.http_request_id == "req-abc"
    assert await store.get_job(request.job.id) == request.job
    assert await store.get_request(request.id, "default") == request


async def test_the_same_idempotency_key_returns_the_same_request(
    store: Store, new_job: NewJobFactory
) -> None:
    first = await store.create_request(_request(new_job, key="k1"))
    again = await store.create_request(_request(new_job, key="k1"))
    assert first.created
    assert not again.created
    assert again.request == first.request
    assert again.queue_position == first.queue_position == 0
    jobs = await store.list_requests(RequestFilter(tenant_id="default"))
    assert [r.id for r in jobs] == [first.request.id]
    assert [j.id for j in await store.list_jobs(JobFilter())] == [first.request.job.id]


async def test_a_key_is_the_tenants_whichever_caller_sends_it(
    store: Store, new_job: NewJobFactory
) -> None:
    first = (await store.create_request(_request(new_job, key="k"))).request
    # Another user or API key of the same tenant: the same request, and no new job.
    other_caller = NewRequest(
        "test.noop", {"doctor": "Ada"}, "caller-2", new_job(), idempotency_key="k"
    )
    again = await store.create_request(other_caller)
    assert not again.created
    assert again.request == first
    assert again.request.caller_id == "caller-1"
    # Another tenant: a request of its own.
    other_tenant = NewRequest(
        "test.noop", {"doctor": "Ada"}, "caller-1", new_job(tenant_id="t2"), idempotency_key="k"
    )
    theirs = await store.create_request(other_tenant)
    assert theirs.created
    assert theirs.request.id != first.id
    assert theirs.request.tenant_id == "t2"
    assert [j.id for j in await store.list_jobs(JobFilter(tenant_id="default"))] == [first.job.id]


async def test_racing_requests_with_one_key_create_one(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    results = await asyncio.gather(
        *(s.create_request(_request(new_job, key="race")) for s in (store, peer_store) * 4)
    )
    assert len({r.request.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert {r.queue_position for r in results} == {0}
    listed = await store.list_requests(RequestFilter(tenant_id="default"))
    assert len(listed) == 1
    # The repeats left no job of their own behind.
    assert [j.id for j in await store.list_jobs(JobFilter())] == [listed[0].job.id]


async def test_a_request_returns_its_queue_position(store: Store, new_job: NewJobFactory) -> None:
    low = [await store.create_request(_request(new_job, priority=3)) for _ in range(3)]
    high = await store.create_request(_request(new_job, priority=1))
    later = await store.create_request(_request(new_job, priority=3, delay_s=60))
    assert [s.queue_position for s in low] == [0, 1, 2]
    assert high.queue_position == 0
    assert later.queue_position == 4  # every due job runs before it
    await store.settle_and_claim(
        [], [], "w", ClaimRequest("w", {"default": 1}, 30, kinds=("test.noop",))
    )
    again = await store.create_request(_request(new_job, key="k", priority=3))
    assert again.queue_position == 3
    running = (await store.list_jobs(JobFilter(state=JobState.RUNNING)))[0]
    assert running.id == high.request.job.id


async def test_requests_submitted_together_each_get_their_job_and_position(
    store: Store, new_job: NewJobFactory
) -> None:
    # Concurrent plain requests may share one statement (PostgreSQL); each must still get
    # its own job, in submission order, and the position its job id implies.
    stored = await asyncio.gather(*(store.create_request(_request(new_job)) for _ in range(30)))
    jobs = [s.request.job for s in stored]
    assert all(s.created for s in stored)
    assert len({job.id for job in jobs}) == 30
    assert [s.queue_position for s in sorted(stored, key=lambda s: s.request.job.id)] == list(
        range(30)
    )
    for s in stored:
        assert await store.get_request(s.request.id, "default") == s.request
    listed = await store.list_jobs(JobFilter(limit=100))
    assert sorted(j.id for j in listed) == sorted(job.id for job in jobs)


async def test_a_repeat_of_a_started_request_has_no_position(
    store: Store, new_job: NewJobFactory
) -> None:
    first = await store.create_request(_request(new_job, key="k"))
    await store.settle_and_claim(
        [], [], "w", ClaimRequest("w", {"default": 1}, 30, kinds=("test.noop",))
    )
    again = await store.create_request(_request(new_job, key="k"))
    assert not again.created
    assert again.request.job.state is JobState.RUNNING
    assert again.queue_position is None
    assert again.request.id == first.request.id


async def test_a_request_whose_job_key_is_held_joins_that_job(
    store: Store, peer_store: Store, new_job: NewJobFactory
) -> None:
    [held] = await store.enqueue([new_job(unique_key="u")])
    joined = await store.create_request(_request(new_job, unique_key="u"))
    assert joined.created
    assert joined.request.job.id == held.id
    racing = await asyncio.gather(
        *(s.create_request(_request(new_job, unique_key="v")) for s in (store, peer_store) * 3)
    )
    assert all(r.created for r in racing)
    assert len({r.request.id for r in racing}) == 6
    assert len({r.request.job.id for r in racing}) == 1
    assert len(await store.list_jobs(JobFilter())) == 2


async def test_another_tenant_cannot_read_a_request(store: Store, new_job: NewJobFactory) -> None:
    request = (await store.create_request(_request(new_job))).request
    assert await store.get_request(request.id, "someone-else") is None
    assert await store.list_requests(RequestFilter(tenant_id="someone-else")) == []


async def test_list_requests_filters_and_pages(store: Store, new_job: NewJobFactory) -> None:
    made = [(await store.create_request(_request(new_job))).request for _ in range(5)]
    other = NewRequest("other.kind", {}, "caller-1", new_job(kind="other.kind"))
    odd = (await store.create_request(other)).request
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
    claimed = await store.settle_and_claim(
        [], [], "w", ClaimRequest("w", {"default": 1}, 30, kinds=("test.noop",))
    )
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
    low = [(await store.create_request(_request(new_job, priority=3))).request for _ in range(3)]
    high = (await store.create_request(_request(new_job, priority=1))).request
    elsewhere = (await store.create_request(_request(new_job, queue="other"))).request
    assert [await store.queue_position(r.job) for r in low] == [1, 2, 3]
    assert await store.queue_position(high.job) == 0
    assert await store.queue_position(elsewhere.job) == 0


async def test_pruning_a_job_prunes_its_request(store: Store, new_job: NewJobFactory) -> None:
    request = (await store.create_request(_request(new_job))).request
    claimed = await store.settle_and_claim(
        [], [], "w", ClaimRequest("w", {"default": 1}, 30, kinds=("test.noop",))
    )
    job = claimed.claimed[0]
    await store.settle_and_claim(
        [Outcome(job.id, job.attempt, OutcomeKind.COMPLETED, job.queue)], [], "w", None
    )
    await asyncio.sleep(0.05)
    assert await store.prune(0.0) == 1
    assert await store.get_request(request.id, "default") is None
    assert await store.list_requests(RequestFilter(tenant_id="default")) == []
