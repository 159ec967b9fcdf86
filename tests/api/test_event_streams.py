"""``/v1/events`` over SSE and WebSocket on a live server: each client gets exactly its
own tenant's events, in order; a reconnect with the last id misses nothing and repeats
nothing; filters; stream tokens; the seed's message; a slow client's overflow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from api_support import FAST_WORKER, api_key, api_settings, bearer
from stream_clients import (
    Received,
    gather_all,
    sse_collect,
    ws_collect,
    ws_connected,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

import conveyor
from conveyor.api import create_app
from conveyor.store.base import Store
from conveyor.store.records import NewRequest
from live_server import live_server

ONE, TWO = "streams-one", "streams-two"


class Live:
    """A live server on the test's store, its API keys per tenant, and a worker."""

    def __init__(self, base: str, app: Any, store: Store, kinds: conveyor.Registry) -> None:
        self.base = base
        self.ws_base = "ws" + base.removeprefix("http")
        self.app = app
        self.store = store
        self.kinds = kinds
        self.keys: dict[str, str] = {}
        self.client = conveyor.Client(store, kinds=kinds)

    async def key(self, tenant_id: str) -> str:
        if tenant_id not in self.keys:
            self.keys[tenant_id] = await api_key(self.app, tenant_id)
        return self.keys[tenant_id]

    async def headers(self, tenant_id: str) -> dict[str, str]:
        return {"Authorization": bearer(await self.key(tenant_id))}

    async def enqueue(self, tenant_id: str, n: int, kind: str = "test.echo") -> list[int]:
        """``n`` requests of ``tenant_id``; their jobs' ids."""
        ids = []
        for i in range(n):
            job = self.client.prepare(kind, {"i": i}, tenant_id=tenant_id)
            new = NewRequest(kind=kind, input={"i": i}, caller_id="tests", job=job)
            ids.append((await self.store.create_request(new)).request.job.id)
        return ids

    async def run_jobs(self) -> None:
        worker = conveyor.Worker(
            self.store,
            conveyor.WorkerConfig(queues={"default": 20}, **FAST_WORKER),
            kinds=self.kinds,
        )
        await asyncio.wait_for(worker.run(burst=True), 30)


@pytest.fixture
async def live(store: Store, kinds: conveyor.Registry, tmp_path: Path) -> AsyncIterator[Live]:
    app = create_app(api_settings(tmp_path, stream_ping_seconds=0.5), store=store, kinds=kinds)
    async with live_server(app) as base:
        yield Live(base, app, store, kinds)


def durable_pairs(got: Received) -> list[tuple[int, str]]:
    return [(m["job_id"], m["type"]) for m in got.durable]


async def test_200_clients_over_two_tenants_get_their_own_events_in_order(live: Live) -> None:
    per_tenant = 50  # of each protocol: 200 clients in all
    jobs = 10
    async with httpx.AsyncClient(base_url=live.base, timeout=60) as http:
        headers = {t: await live.headers(t) for t in (ONE, TWO)}
        sse = [
            # since=0: every client gets everything from the start, subscribed in time or not
            # (a loaded machine may take longer than the pause below to subscribe them all).
            asyncio.create_task(sse_collect(http, "/v1/events?since=0", 2 * jobs, headers[t]))
            for t in (ONE, TWO)
            for _ in range(per_tenant)
        ]
        sockets = []
        for t in (ONE, TWO):
            for _ in range(per_tenant):
                url = f"{live.ws_base}/v1/events/ws?since=0"
                sockets.append((t, await ws_connected(url, headers[t])))
        ws = [asyncio.create_task(ws_collect(s, 2 * jobs)) for _, s in sockets]
        # Every SSE client is subscribed once its first bytes came: the retry hint.
        await asyncio.sleep(1.0)
        expected = {t: await live.enqueue(t, jobs) for t in (ONE, TWO)}
        await live.run_jobs()
        results = await gather_all(*sse, *ws, timeout=90)
        for _, s in sockets:
            await s.close()
    tenants = [t for t in (ONE, TWO) for _ in range(per_tenant)] * 2
    for n, (tenant_id, got) in enumerate(zip(tenants, results, strict=True)):
        assert got.durable, f"client {n} got nothing: {got.other}, {got.live[:3]}"
        want = {(j, kind) for j in expected[tenant_id] for kind in ("job.queued", "job.completed")}
        assert set(durable_pairs(got)) == want
        assert len(got.durable) == len(want), "an event came twice"
        assert {m["tenant_id"] for m in got.durable + got.live} == {tenant_id}
        ids = [m["id"] for m in got.durable]
        assert ids == sorted(ids)
        for job_id in expected[tenant_id]:
            mine = [m["type"] for m in got.durable if m["job_id"] == job_id]
            assert mine == ["job.queued", "job.completed"]
        # The seed's message follows each completion (the client stopped reading at the
        # last completion, before the message that follows it).
        seeded = {m["jobId"] for m in got.seed}
        assert seeded <= set(expected[tenant_id])
        assert len(seeded) >= jobs - 1


async def test_a_client_that_reconnects_with_its_last_id_misses_nothing(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.base, timeout=30) as http:
        headers = await live.headers(ONE)
        first = asyncio.create_task(sse_collect(http, "/v1/events?since=0", 3, headers))
        await asyncio.sleep(0.5)
        ids = await live.enqueue(ONE, 6)
        got = await first
        assert len(got.durable) == 3
        # Gone for a while; more happens meanwhile.
        await live.run_jobs()
        resumed = await sse_collect(
            http, "/v1/events", 9, {**headers, "Last-Event-ID": str(got.last_id)}
        )
        again = [*got.durable, *resumed.durable]
        assert [m["id"] for m in again] == sorted({m["id"] for m in again})
        assert sorted(durable_pairs(resumed) + durable_pairs(got)) == sorted(
            (j, t) for j in ids for t in ("job.queued", "job.completed")
        )
        # The WebSocket resumes with since=.
        async with ws_connected(f"{live.ws_base}/v1/events/ws?since={got.last_id}", headers) as ws:
            over_ws = await ws_collect(ws, 9)
        assert [m["id"] for m in over_ws.durable] == [m["id"] for m in resumed.durable]


async def test_filters_by_request_job_kind_and_type(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.base, timeout=30) as http:
        headers = await live.headers(ONE)
        response = await http.post(
            "/v1/requests", json={"kind": "test.echo", "input": {"x": 1}}, headers=headers
        )
        assert response.status_code == 202, response.text
        request = response.json()
        await live.enqueue(ONE, 2)
        await live.run_jobs()
        by_request = await sse_collect(
            http, f"/v1/events?request_id={request['request_id']}&since=0", 2, headers
        )
        assert {m["request_id"] for m in by_request.durable} == {request["request_id"]}
        assert [m["type"] for m in by_request.durable] == ["job.queued", "job.completed"]
        completed = await sse_collect(http, "/v1/events?type=job.completed&since=0", 3, headers)
        assert {m["type"] for m in completed.durable} == {"job.completed"}
        assert completed.seed == [], "the seed's message was not asked for"
        seeded = await sse_collect(
            http, "/v1/events?type=job-completed&since=0", 0, headers, until_seed=1
        )
        assert seeded.durable == []
        assert seeded.seed[0]["jobId"] == by_request.durable[-1]["job_id"]
        bad = await http.get("/v1/events?type=job.exploded", headers=headers)
        assert bad.status_code == 422
        assert "job.completed" in bad.text
        other = await http.get(
            f"/v1/events?request_id={request['request_id']}", headers=await live.headers(TWO)
        )
        assert other.status_code == 404


async def test_a_stream_token_opens_a_stream_for_a_browser(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.base, timeout=30) as http:
        headers = await live.headers(ONE)
        token = (await http.post("/v1/events/token", headers=headers)).json()
        assert token["expires_in"] > 0
        await live.enqueue(ONE, 1)
        got = await sse_collect(http, f"/v1/events?since=0&token={token['token']}", 1)
        assert got.durable[0]["tenant_id"] == ONE
        async with ws_connected(
            f"{live.ws_base}/v1/events/ws?since=0&token={token['token']}"
        ) as ws:
            assert (await ws_collect(ws, 1)).durable[0]["tenant_id"] == ONE
        # An API key in the URL is not a stream token; nor is a made-up one.
        for text in (await live.key(ONE), "x.y.z"):
            refused = await http.get(f"/v1/events?token={text}")
            assert refused.status_code == 401
        with pytest.raises(InvalidStatus) as refused_ws:
            async with ws_connected(f"{live.ws_base}/v1/events/ws?token=x.y.z"):
                pass
        assert refused_ws.value.response.status_code in (401, 403)
        assert (await http.get("/v1/events")).status_code == 401


async def test_idle_streams_are_pinged(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.base, timeout=30) as http:
        headers = await live.headers(ONE)
        async with ws_connected(f"{live.ws_base}/v1/events/ws", headers) as ws:
            got = await ws_collect_other(ws)
        assert got == {"type": "ping"}
        async with http.stream("GET", "/v1/events", headers=headers) as response:
            lines = response.aiter_lines()
            seen = [await anext(lines) for _ in range(4)]
        assert ": ping" in seen


async def ws_collect_other(ws: Any) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_a_client_too_slow_is_told_where_to_resume_and_disconnected(
    store: Store, kinds: conveyor.Registry, tmp_path: Path
) -> None:
    app = create_app(api_settings(tmp_path, stream_buffer=10), store=store, kinds=kinds)
    async with live_server(app) as base:
        live = Live(base, app, store, kinds)
        headers = await live.headers(ONE)
        async with ws_connected(f"{live.ws_base}/v1/events/ws", headers) as ws:
            await asyncio.sleep(0.3)
            # Thirty events in one commit reach the stream at once: more than it holds.
            jobs = [live.client.prepare("test.echo", {}, tenant_id=ONE) for _ in range(30)]
            await live.client.enqueue_many(jobs)
            got = await ws_collect(ws, 30)
            assert got.other[-1]["type"] == "overflow"
            resume_from = got.other[-1]["resume_from"]
            assert resume_from == got.last_id
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
        async with ws_connected(
            f"{live.ws_base}/v1/events/ws?since={resume_from or 0}", headers
        ) as ws:
            rest = await ws_collect(ws, 30 - len(got.durable))
        ids = [m["id"] for m in got.durable + rest.durable]
        assert len(ids) == 30
        assert ids == sorted(set(ids))


HOSTILE = [
    "",
    "-1",
    "0",
    "9223372036854775808",
    "1e3",
    "x" * 5000,
    "\x00",
    "%00",
    "%FF%FE",
    "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
    "job.completed,",
    ",,,",
    "' OR 1=1 --",
    "../../etc/passwd",
    "🦀",
]


async def _sse_status(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """The status of a stream's answer; a refusal's body must be JSON with a detail."""
    async with http.stream("GET", url, headers=headers) as answer:
        if answer.status_code >= 400:
            assert "detail" in orjson.loads(await answer.aread()), url
        return answer.status_code


async def _ws_status(url: str, headers: dict[str, str]) -> int:
    """101 for a WebSocket opened, the refused handshake's status, or 1008 for a socket
    closed because the query's model refused a value."""
    try:
        async with ws_connected(url, headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else 0


@pytest.mark.parametrize("name", ["since", "request_id", "job_id", "kind", "type", "token"])
async def test_hostile_stream_parameters_get_a_clear_answer(live: Live, name: str) -> None:
    """Every value of every parameter: a stream or a JSON 4xx naming the problem, never a
    5xx; over WebSocket, a stream, a refused handshake or a policy close, never a crash."""
    headers = await live.headers(ONE)
    async with httpx.AsyncClient(base_url=live.base, timeout=10) as http:
        for value in HOSTILE:
            query = httpx.QueryParams({name: value})
            assert await _sse_status(http, f"/v1/events?{query}", headers) < 500, value
            status = await _ws_status(f"{live.ws_base}/v1/events/ws?{query}", headers)
            assert status in (101, 1008) or 400 <= status < 500, (value, status)


async def test_a_hostile_last_event_id_gets_a_clear_answer(live: Live) -> None:
    headers = await live.headers(ONE)
    async with httpx.AsyncClient(base_url=live.base, timeout=10) as http:
        for value in [v for v in HOSTILE if v.isascii() and "\x00" not in v]:
            status = await _sse_status(http, "/v1/events", {**headers, "Last-Event-ID": value})
            assert status in (200, 422), (value, status)
