"""The Client's tenant limits: set, read back, replaced, cleared, and bad values refused
before anything reaches the store, on both stores."""

from __future__ import annotations

import pytest
from limits import parse

import conveyor
from conveyor import TenantLimits
from conveyor.engine.limits import LimitError


async def test_limits_are_set_listed_replaced_and_cleared(client: conveyor.Client) -> None:
    got = await client.set_tenant_limits(
        "video", "acme", concurrency=2, rate="30 per minute", weight=3
    )
    assert got == TenantLimits("video", "acme", 2, "30/minute", 3)
    await client.set_tenant_limits("video", "zeta", weight=2)
    await client.set_tenant_limits("qa", "acme", rate="5/10 seconds")

    assert await client.tenant_limits("video") == [
        got,
        TenantLimits("video", "zeta", None, None, 2),
    ]
    assert [t.queue for t in await client.tenant_limits(tenant_id="acme")] == ["qa", "video"]
    [qa] = await client.tenant_limits("qa")
    assert qa.rate == "5/10 second"
    # What is stored is what the API's limiter reads.
    assert (parse(qa.rate).amount, parse(qa.rate).get_expiry()) == (5, 10)

    # A set replaces: the cap and the rate left out are lifted.
    await client.set_tenant_limits("video", "acme", weight=1)
    assert (await client.tenant_limits("video", tenant_id="acme")) == [
        TenantLimits("video", "acme", None, None, 1)
    ]
    assert await client.set_tenant_limits("video", "acme") is None
    assert await client.tenant_limits("video", tenant_id="acme") == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 10_001}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"weight": 0}, "weight"),
        ({"weight": 1001}, "weight"),
        ({"weight": 2.0}, "weight"),
        ({"rate": "0/minute"}, "rate"),
        ({"rate": "10/fortnight"}, "rate"),
        ({"rate": "10/second;5/minute"}, "rate"),
        ({"rate": "1/0 seconds"}, "rate"),
        ({"rate": "1/1001 seconds"}, "rate"),
        ({"rate": "1000000001/second"}, "rate"),
        ({"rate": "\u0661\u0662/minute"}, "rate"),
        ({"rate": ""}, "rate"),
    ],
)
async def test_bad_limits_are_refused_naming_the_field(
    client: conveyor.Client, options: dict[str, object], field: str
) -> None:
    with pytest.raises(LimitError) as caught:
        await client.set_tenant_limits("video", "acme", **options)  # type: ignore[arg-type]
    assert caught.value.loc == (field,)
    assert str(caught.value).startswith(f"{field} ")
    assert await client.tenant_limits() == []


@pytest.mark.parametrize(
    ("queue", "tenant", "field"),
    [
        ("no spaces", "acme", "queue"),
        ("", "acme", "queue"),
        ("video", "", "tenant_id"),
        ("video", "a\x00b", "tenant_id"),
        ("video", "x" * 101, "tenant_id"),
    ],
)
async def test_bad_queue_or_tenant_is_refused(
    client: conveyor.Client, queue: str, tenant: str, field: str
) -> None:
    with pytest.raises(LimitError) as caught:
        await client.set_tenant_limits(queue, tenant, weight=2)
    assert caught.value.loc == (field,)
    assert await client.tenant_limits() == []
