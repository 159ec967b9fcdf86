"""The store contract, fair share: a queue's tenants are claimed in turn, by weight, within
their concurrency caps, with strict priority within each tenant."""

from __future__ import annotations

import asyncio

from contract_support import NOOP, W1, W2, NewJobFactory, claim, completed, settle

from conveyor.store.base import Store
from conveyor.store.fairness import DISCOVER_S


async def test_a_burst_of_one_tenant_does_not_hold_back_another(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(tenant_id="a") for _ in range(10_000)])
    [b] = await store.enqueue([new_job(tenant_id="b")])

    first: list[int] = []
    for _ in range(3):
        first.extend(j.id for j in (await claim(store, W1, {"default": 1})).claimed)

    assert b.id in first


async def test_a_newcomer_to_a_queue_of_one_tenant_is_served_at_the_next_claim(
    store: Store, new_job: NewJobFactory
) -> None:
    """Claims of a queue that held one tenant take a short cut (PostgreSQL: claim_lone);
    the first claim after another tenant's job arrives still serves it."""
    await store.enqueue([new_job(tenant_id="b") for _ in range(100)])
    for _ in range(3):
        assert len((await claim(store, W1, {"default": 10})).claimed) == 10
    [newcomer] = await store.enqueue([new_job(tenant_id="a")])

    got = (await claim(store, W1, {"default": 2})).claimed

    assert newcomer.id in [j.id for j in got]
    assert len(got) == 2


async def test_a_newcomer_to_a_queue_of_several_tenants_is_served_within_discover_s(
    store: Store, new_job: NewJobFactory
) -> None:
    for tenant in ("a", "b"):
        await store.enqueue([new_job(tenant_id=tenant) for _ in range(100)])
    for _ in range(3):
        assert len((await claim(store, W1, {"default": 10})).claimed) == 10
    [newcomer] = await store.enqueue([new_job(tenant_id="c")])
    await asyncio.sleep(DISCOVER_S)

    got = (await claim(store, W1, {"default": 3})).claimed

    assert newcomer.id in [j.id for j in got]


async def test_a_newcomer_is_served_at_once_when_the_known_tenants_run_out(
    store: Store, new_job: NewJobFactory
) -> None:
    """The claims of a busy queue walk the tenants they know; one that comes back short
    looks for the others at once."""
    for tenant in ("a", "b"):
        await store.enqueue([new_job(tenant_id=tenant) for _ in range(10)])
    for _ in range(2):
        assert len((await claim(store, W1, {"default": 10})).claimed) == 10
    [newcomer] = await store.enqueue([new_job(tenant_id="c")])

    got = (await claim(store, W1, {"default": 10})).claimed

    assert [j.id for j in got] == [newcomer.id]


async def test_tenants_take_turns_and_priority_is_strict_within_each(
    store: Store, new_job: NewJobFactory
) -> None:
    for tenant in ("a", "b", "c"):
        await store.enqueue([new_job(tenant_id=tenant, priority=3) for _ in range(3)])
    [urgent] = await store.enqueue([new_job(tenant_id="a", priority=1)])

    order = []
    for _ in range(6):
        [job] = (await claim(store, W1, {"default": 1})).claimed
        order.append(job)

    assert sorted(j.tenant_id for j in order[:3]) == ["a", "b", "c"]
    assert sorted(j.tenant_id for j in order[3:]) == ["a", "b", "c"]
    assert next(j for j in order if j.tenant_id == "a").id == urgent.id


async def test_weights_share_the_claims(store: Store, new_job: NewJobFactory) -> None:
    for tenant in ("a", "b"):
        await store.enqueue([new_job(tenant_id=tenant) for _ in range(50)])
    await store.set_tenant_limits("default", "a", concurrency=None, rate=None, weight=3)

    got = (await claim(store, W1, {"default": 40})).claimed

    assert sum(j.tenant_id == "a" for j in got) == 30


async def test_a_tenant_cap_holds_across_workers(store: Store, new_job: NewJobFactory) -> None:
    await store.enqueue([new_job(tenant_id="a") for _ in range(10)])
    await store.enqueue([new_job(tenant_id="b") for _ in range(10)])
    await store.set_tenant_limits("default", "a", concurrency=2, rate=None, weight=None)

    one = (await claim(store, W1, {"default": 5})).claimed
    two = (await claim(store, W2, {"default": 5})).claimed

    assert sum(j.tenant_id == "a" for j in one + two) == 2
    assert len(one) + len(two) == 10
    finished = next(j for j in one + two if j.tenant_id == "a")
    worker = W1 if finished in one else W2
    await settle(store, worker, completed(finished))
    again = (await claim(store, W1, {"default": 5})).claimed
    assert [j.tenant_id for j in again].count("a") == 1


async def test_tenant_limits_are_set_listed_and_cleared(store: Store) -> None:
    await store.set_tenant_limits("q", "a", concurrency=3, rate="100/minute", weight=2)
    [limits] = await store.list_tenant_limits("q")
    assert (limits.concurrency, limits.rate, limits.weight) == (3, "100/minute", 2)

    await store.set_tenant_limits("q", "a", concurrency=None, rate=None, weight=None)
    assert await store.list_tenant_limits() == []


async def test_a_claim_left_short_by_a_small_tenant_is_filled_from_the_others(
    store: Store, new_job: NewJobFactory
) -> None:
    await store.enqueue([new_job(tenant_id="a") for _ in range(30)])
    await store.enqueue([new_job(tenant_id="b")])
    await store.enqueue([new_job(tenant_id="c") for _ in range(2)])

    got = (await claim(store, W1, {"default": 10})).claimed

    assert len(got) == 10
    assert sorted(j.tenant_id for j in got) == ["a"] * 7 + ["b"] + ["c"] * 2
    # Within each tenant, in its own order.
    a_ids = [j.id for j in got if j.tenant_id == "a"]
    assert sorted(a_ids) == list(range(min(a_ids), min(a_ids) + 7))


async def test_with_many_tenants_each_claim_serves_the_next_ones(
    store: Store, new_job: NewJobFactory
) -> None:
    """A claim of 20 serves at most about 10 tenants, 2 jobs each: with 30 tenants the
    second claim serves 10 others, the third the last 10, and none is served twice
    before every one was served once."""
    tenants = [f"t{i:02d}" for i in range(30)]
    await store.enqueue([new_job(tenant_id=t) for _ in range(5) for t in tenants])

    served: list[set[str]] = []
    for _ in range(3):
        got = (await claim(store, W1, {"default": 20})).claimed
        assert len(got) == 20
        served.append({j.tenant_id for j in got})

    assert [len(s) for s in served] == [10, 10, 10]
    assert set().union(*served) == set(tenants)


async def test_a_claim_the_chosen_tenant_leaves_short_is_filled_from_the_tenant_left_out(
    store: Store, new_job: NewJobFactory
) -> None:
    """A heavy tenant's share is the whole claim, so the claim chooses it alone; its 3 jobs
    leave 7 to take, and the other tenant has them."""
    await store.enqueue([new_job(tenant_id="a") for _ in range(3)])
    await store.enqueue([new_job(tenant_id="b") for _ in range(10)])
    await store.set_tenant_limits("default", "a", concurrency=None, rate=None, weight=1000)

    got = (await claim(store, W1, {"default": 10})).claimed

    assert sorted(j.tenant_id for j in got) == ["a"] * 3 + ["b"] * 7
    b_ids = [j.id for j in got if j.tenant_id == "b"]
    assert sorted(b_ids) == list(range(min(b_ids), min(b_ids) + 7))


async def test_with_many_tenants_a_claim_is_filled_from_those_left_out_within_their_caps(
    store: Store, new_job: NewJobFactory
) -> None:
    """Of 20 tenants a claim of 100 chooses the 10 furthest behind (t00 to t09), one job
    each; t10 to t17 hold one job each too, t18 and t19 many: the 82 missing come from
    those left out, in pass order, t18 within its cap."""
    small = [f"t{i:02d}" for i in range(18)]
    await store.enqueue([new_job(tenant_id=t) for t in small])
    for tenant in ("t18", "t19"):
        await store.enqueue([new_job(tenant_id=tenant) for _ in range(200)])
    await store.set_tenant_limits("default", "t18", concurrency=30, rate=None, weight=None)

    got = (await claim(store, W1, {"default": 100})).claimed

    assert len(got) == 100
    counts = {t: sum(j.tenant_id == t for j in got) for t in {j.tenant_id for j in got}}
    assert counts == {**dict.fromkeys(small, 1), "t18": 30, "t19": 52}


async def test_a_refill_walks_a_capped_tenant_of_two_kinds_within_one_cap(
    store: Store, new_job: NewJobFactory
) -> None:
    """``x``'s walks of both kinds share its cap of 5: the refill takes 5 of ``x`` in all
    and the other 14 missing of ``y``."""
    await store.enqueue([new_job(tenant_id="a")])
    await store.set_tenant_limits("default", "a", concurrency=None, rate=None, weight=1000)
    for kind in (NOOP, "test.other"):
        await store.enqueue([new_job(tenant_id="x", kind=kind) for _ in range(10)])
    await store.set_tenant_limits("default", "x", concurrency=5, rate=None, weight=None)
    await store.enqueue([new_job(tenant_id="y") for _ in range(20)])

    got = (await claim(store, W1, {"default": 20}, kinds=(NOOP, "test.other"))).claimed

    assert sorted(j.tenant_id for j in got) == ["a"] + ["x"] * 5 + ["y"] * 14
