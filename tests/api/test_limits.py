"""The operator routes of tenant limits (``/v1/queues/{name}/tenant-limits``) and the
submission rate cap they set, on both stores.

The callers are real: an operator, a member of tenant A and a member of tenant B made
through the accounts service on the test's store, each logged in for an access token,
with the service attached to the app as ``app.state.accounts``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import api_settings, serving

import conveyor
from conveyor.accounts.service import Accounts
from conveyor.api import create_app
from conveyor.config import Settings
from conveyor.store.accounts import Role
from conveyor.store.base import Store

PASSWORD = "a long enough test password"


@dataclass(frozen=True)
class Callers:
    operator: dict[str, str]
    a: dict[str, str]
    """Headers of a member of tenant A."""
    b: dict[str, str]
    tenant_a: str
    tenant_b: str
    accounts: Accounts


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    # The cheapest argon2id the settings allow: the tests log in, they do not measure.
    cheap = {"password_time_cost": 1, "password_memory_kib": 8, "password_parallelism": 1}
    return api_settings(tmp_path, **cheap, **overrides)


async def _login(accounts: Accounts, email: str, tenant_id: str | None) -> dict[str, str]:
    session = await accounts.login(email, PASSWORD, tenant_id)
    return {"Authorization": f"Bearer {session.access_token}"}


@asynccontextmanager
async def _app(
    store: Store, kinds: conveyor.Registry, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Callers]]:
    settings = _settings(tmp_path, **overrides)
    accounts = Accounts(store, settings)
    await accounts.start()
    await accounts.create_operator("op@example.com", PASSWORD)
    members = {}
    for name in ("a", "b"):
        tenant = await accounts.create_tenant(f"Tenant {name}")
        await accounts.create_user(f"{name}@example.com", PASSWORD)
        await accounts.add_member(tenant.id, f"{name}@example.com", Role.MEMBER)
        members[name] = (tenant.id, await _login(accounts, f"{name}@example.com", tenant.id))
    callers = Callers(
        operator=await _login(accounts, "op@example.com", None),
        a=members["a"][1],
        b=members["b"][1],
        tenant_a=members["a"][0],
        tenant_b=members["b"][0],
        accounts=accounts,
    )
    app = create_app(settings, store=store, kinds=kinds)
    app.state.accounts = accounts
    async with serving(app) as http:
        yield http, callers


@pytest.fixture
async def served(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Callers]]:
    async with _app(store, kinds, tmp_path) as pair:
        yield pair


async def test_an_operator_puts_and_lists_a_queues_tenant_limits(
    served: tuple[httpx.AsyncClient, Callers], store: Store
) -> None:
    http, who = served
    put = await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_a}",
        json={"concurrency": 2, "rate": "30 per minute", "weight": 3},
        headers=who.operator,
    )
    assert put.status_code == 200, put.text
    assert put.json() == {
        "queue": "video",
        "tenant_id": who.tenant_a,
        "concurrency": 2,
        "rate": "30/minute",
        "weight": 3,
    }
    await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_b}", json={"weight": 2}, headers=who.operator
    )

    listed = await http.get("/v1/queues/video/tenant-limits", headers=who.operator)
    assert listed.status_code == 200, listed.text
    assert [(t["tenant_id"], t["weight"]) for t in listed.json()["limits"]] == sorted(
        [(who.tenant_a, 3), (who.tenant_b, 2)]
    )
    # What the route set is what the store holds, and what the workers' claims read.
    [a] = [t for t in await store.list_tenant_limits("video") if t.tenant_id == who.tenant_a]
    assert (a.concurrency, a.rate, a.weight) == (2, "30/minute", 3)

    # A PUT replaces: what it leaves out is lifted; all null removes the row.
    again = await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_a}", json={"weight": 1}, headers=who.operator
    )
    assert (again.json()["concurrency"], again.json()["rate"]) == (None, None)
    cleared = await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_a}", json={}, headers=who.operator
    )
    assert cleared.status_code == 200
    assert [t.tenant_id for t in await store.list_tenant_limits("video")] == [who.tenant_b]
    empty = await http.get("/v1/queues/nothing/tenant-limits", headers=who.operator)
    assert empty.json() == {"limits": []}


async def test_only_an_operator_may_read_or_set_them(
    served: tuple[httpx.AsyncClient, Callers], store: Store
) -> None:
    http, who = served
    path = f"/v1/queues/video/tenant-limits/{who.tenant_a}"
    for headers in (who.a, who.b):
        put = await http.put(path, json={"rate": "1000/second"}, headers=headers)
        assert put.status_code == 403, put.text
        assert "operator" in put.json()["detail"]
        got = await http.get("/v1/queues/video/tenant-limits", headers=headers)
        assert got.status_code == 403
    assert (await http.put(path, json={"weight": 2})).status_code == 401
    assert (await http.get("/v1/queues/video/tenant-limits")).status_code == 401
    assert await store.list_tenant_limits() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "2"}, "concurrency"),
        ({"concurrency": 10_001}, "concurrency"),
        ({"weight": 1001}, "weight"),
        ({"weight": 2.5}, "weight"),
        ({"rate": "0/minute"}, "rate"),
        ({"rate": "10/fortnight"}, "rate"),
        ({"rate": "10/second;1/minute"}, "rate"),
        ({"rate": "x" * 101}, "rate"),
        ({"limit": 3}, "limit"),
    ],
)
async def test_bad_limits_are_422_naming_the_field(
    served: tuple[httpx.AsyncClient, Callers], store: Store, body: dict[str, Any], field: str
) -> None:
    http, who = served
    answer = await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_a}", json=body, headers=who.operator
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", field], answer.text
    assert await store.list_tenant_limits() == []


@pytest.mark.parametrize(
    "path",
    ["/v1/queues/no%20spaces/tenant-limits/t", "/v1/queues/video/tenant-limits/" + "x" * 101],
)
async def test_a_bad_queue_or_tenant_in_the_path_is_422(
    served: tuple[httpx.AsyncClient, Callers], store: Store, path: str
) -> None:
    http, who = served
    answer = await http.put(path, json={"weight": 2}, headers=who.operator)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][0] == "path"
    assert await store.list_tenant_limits() == []


async def _post(http: httpx.AsyncClient, headers: dict[str, str], n: int = 0) -> httpx.Response:
    return await http.post(
        "/v1/requests", json={"kind": "test.echo", "input": {"n": n}}, headers=headers
    )


async def test_a_tenant_over_its_submission_cap_gets_429_and_others_do_not(
    served: tuple[httpx.AsyncClient, Callers], store: Store
) -> None:
    http, who = served
    put = await http.put(
        f"/v1/queues/default/tenant-limits/{who.tenant_a}",
        json={"rate": "3/minute"},
        headers=who.operator,
    )
    assert put.status_code == 200, put.text

    for n in range(3):
        assert (await _post(http, who.a, n)).status_code == 202
    refused = await _post(http, who.a, 3)
    assert refused.status_code == 429, refused.text
    detail = refused.json()["detail"]
    assert who.tenant_a in detail
    assert "queue 'default'" in detail
    assert "3 requests per 60 seconds" in detail
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == "3"
    # Tenant B has no cap in the queue: its budget is its own.
    for n in range(5):
        assert (await _post(http, who.b, n)).status_code == 202
    # Nothing of the refused submission was stored.
    queued = await store.queue_stats(tenant_id=who.tenant_a)
    assert sum(s.counts.get("queued", 0) for s in queued) == 3

    # The cap lifted, tenant A submits again at once (this process re-reads at once).
    await http.put(
        f"/v1/queues/default/tenant-limits/{who.tenant_a}", json={}, headers=who.operator
    )
    assert (await _post(http, who.a, 4)).status_code == 202


async def test_the_cap_of_another_queue_does_not_apply(
    served: tuple[httpx.AsyncClient, Callers],
) -> None:
    http, who = served
    await http.put(
        f"/v1/queues/video/tenant-limits/{who.tenant_a}",
        json={"rate": "1/hour"},
        headers=who.operator,
    )
    for n in range(3):
        assert (await _post(http, who.a, n)).status_code == 202


async def test_a_cap_set_through_one_api_process_holds_in_another_within_a_second(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    """Each API process reads the caps from the store, at most a second old. (Their
    counters are each their own here, the limiter being in memory; with
    CONVEYOR_REDIS_URL they share them.)"""
    async with _app(store, kinds, tmp_path) as (one, who):
        second = create_app(_settings(tmp_path), store=store, kinds=kinds)
        second.state.accounts = who.accounts
        async with serving(second) as two:
            assert (await _post(two, who.a)).status_code == 202  # caps read: none set
            await one.put(
                f"/v1/queues/default/tenant-limits/{who.tenant_a}",
                json={"rate": "1/hour"},
                headers=who.operator,
            )
            set_at = time.monotonic()
            assert (await _post(one, who.a)).status_code == 202
            assert (await _post(one, who.a)).status_code == 429
            codes = []
            while time.monotonic() - set_at < 5 and 429 not in codes:
                codes.append((await _post(two, who.a)).status_code)
                await asyncio.sleep(0.1)
            assert codes[-1] == 429, codes
            assert time.monotonic() - set_at < 2.5, codes
