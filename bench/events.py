"""The event log's consumers under load (issue 13): how long a job's completion takes to
reach 1,000 WebSocket clients, and how many webhook deliveries a worker makes per second.

``.venv/bin/python -m bench.events --help``

**Stream latency.** The servers of :mod:`bench.http_load` (``conveyor api`` beside one
``conveyor worker`` on a fresh PostgreSQL database; ``conveyor serve`` on a temporary
SQLite file), at their defaults but for the rate limits and WARNING logs. ``--clients``
WebSocket clients (one tenant's API key, ``type=job.completed``) connect to
``/v1/events/ws``; then ``--jobs`` ``bench.noop`` requests are submitted at ``--rate`` per
second. Each client notes when each ``job.completed`` arrives; the latency of a receipt
is that time minus the event's own time (written by the completing transaction: on
PostgreSQL the transaction's start, a little before its commit, so the figure is an upper
bound). Every client must get every job's event exactly once, in order; the p50/p99/max
are over all receipts. The clients run in this process on the same two cores as the
servers and PostgreSQL, so their own delay is in the figures.

**Webhook deliveries.** A receiver on loopback (raw asyncio HTTP, answers 204), one
endpoint of the tenant subscribed to ``job.completed`` (the allow-list names 127.0.0.1);
``--webhook-jobs`` no-op jobs are enqueued; the rate is deliveries received per second from
the first to the last, each checked against its signature's headers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import standardwebhooks
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.http_load import (
    DEFAULT_POSTGRES_URL,
    KIND,
    QUEUE,
    BenchError,
    free_port,
    fresh_database,
    servers,
)

SETUPS = {"postgresql": "postgresql", "sqlite": "sqlite"}
LATENCY_GOAL_MS = 100.0


@dataclass
class Receipts:
    """One client's receipts: job id -> seconds from completion to receipt."""

    latencies: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order: int = 0
    last_id: int = 0


async def listen(ws: ClientConnection, got: Receipts, until: int) -> None:
    with contextlib.suppress(ConnectionClosed):
        while len(got.latencies) < until:
            raw = await ws.recv()
            now = time.time()
            message = orjson.loads(raw)
            if message.get("type") != "job.completed":
                continue
            at = dt.datetime.fromisoformat(message["at"]).timestamp()
            job_id = message["job_id"]
            if job_id in got.latencies:
                got.duplicates += 1
            if message["id"] <= got.last_id:
                got.out_of_order += 1
            got.last_id = message["id"]
            got.latencies[job_id] = now - at


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def stream_latency(setup: str, opts: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database(setup, opts.postgres_url, None) as url:
        port = free_port()
        async with servers(setup, url, port) as running:
            auth = running.callers["key"]
            ws_url = f"ws://127.0.0.1:{port}/v1/events/ws?type=job.completed"
            sockets: list[ClientConnection] = []
            try:
                for _ in range(opts.clients):
                    sockets.append(
                        await connect(
                            ws_url, additional_headers={"Authorization": auth}, open_timeout=30
                        )
                    )
                receipts = [Receipts() for _ in sockets]
                tasks = [
                    asyncio.create_task(listen(ws, got, opts.jobs))
                    for ws, got in zip(sockets, receipts, strict=True)
                ]
                await asyncio.sleep(1.0)
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers={"Authorization": auth}
                ) as http:
                    t0 = time.monotonic()
                    for i in range(opts.jobs):
                        await asyncio.sleep(max(0.0, t0 + i / opts.rate - time.monotonic()))
                        response = await http.post(
                            "/v1/requests", json={"kind": KIND, "input": {"i": i}}
                        )
                        if response.status_code != 202:
                            raise BenchError(f"POST answered {response.status_code}")
                _, pending = await asyncio.wait(tasks, timeout=opts.jobs / opts.rate + 30)
                for task in pending:
                    task.cancel()
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    values = [v * 1000 for got in receipts for v in got.latencies.values()]
    missing = opts.clients * opts.jobs - len(values)
    return {
        "setup": setup,
        "clients": opts.clients,
        "jobs": opts.jobs,
        "rate": opts.rate,
        "receipts": len(values),
        "missing": missing,
        "duplicates": sum(got.duplicates for got in receipts),
        "out_of_order": sum(got.out_of_order for got in receipts),
        "p50_ms": percentile(values, 0.50) if values else None,
        "p99_ms": percentile(values, 0.99) if values else None,
        "max_ms": max(values) if values else None,
    }


class Hooks:
    """A webhook receiver on loopback: answers 204 at once, verifies each delivery's
    signature with ``standardwebhooks`` (the receivers' own library), notes when each came."""

    def __init__(self, secret: str) -> None:
        self._verifier = standardwebhooks.Webhook(secret)
        self.arrivals: list[float] = []
        self.ids: set[str] = set()
        self.bad = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Event()

    async def reached(self, n: int) -> None:
        """Until ``n`` distinct messages came."""
        while len(self.ids) < n:
            self._arrived.clear()
            await self._arrived.wait()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    self._verifier.verify(body, headers)
                    self.ids.add(headers["webhook-id"])
                    self.arrivals.append(time.monotonic())
                    self._arrived.set()
                except standardwebhooks.WebhookVerificationError:
                    self.bad += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


async def webhook_rate(setup: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Deliveries per second of ``--webhook-jobs`` completions to one endpoint."""
    from conveyor import Client
    from conveyor.accounts import Accounts
    from conveyor.config import Settings
    from conveyor.notify.signing import new_secret
    from conveyor.store import make_store
    from conveyor.store.webhooks import NewWebhook

    secret = new_secret()
    hooks = Hooks(secret)
    await hooks.start()
    n = opts.webhook_jobs
    try:
        async with fresh_database(setup, opts.postgres_url, None) as url:
            port = free_port()
            env = {"CONVEYOR_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
            async with servers(setup, url, port, env):
                settings = Settings(database_url=url)
                store = make_store(settings)
                await store.open()
                try:
                    accounts = Accounts(store, settings)
                    await accounts.start()
                    tenant = await accounts.create_tenant("Hooks")
                    await store.create_webhook(
                        NewWebhook(
                            tenant_id=tenant.id,
                            url=f"http://127.0.0.1:{hooks.port}/hook",
                            event_types=("job.completed",),
                            secret=secret,
                        )
                    )
                    client = Client(store)
                    jobs = [
                        client.prepare(KIND, {}, queue=QUEUE, tenant_id=tenant.id) for _ in range(n)
                    ]
                    await client.enqueue_many(jobs)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(hooks.reached(n), 120)
                finally:
                    await store.close()
    finally:
        await hooks.stop()
    span = hooks.arrivals[-1] - hooks.arrivals[0] if len(hooks.arrivals) > 1 else None
    return {
        "setup": setup,
        "deliveries": len(hooks.ids),
        "expected": n,
        "duplicates": len(hooks.arrivals) - len(hooks.ids),
        "bad_signatures": hooks.bad,
        "rate": (len(hooks.arrivals) - 1) / span if span else None,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


async def run_all(opts: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for run in range(1, opts.runs + 1):
        for setup in opts.store:
            if opts.webhook_jobs:
                hook = await webhook_rate(setup, opts)
                hook["run"] = run
                print(
                    f"  {setup:<11} run {run}  webhooks: {hook['deliveries']}/{hook['expected']} "
                    f"delivered, {hook['duplicates']} twice, {hook['bad_signatures']} bad, "
                    f"{hook['rate'] or 0:,.0f} deliveries/s",
                    flush=True,
                )
                rows.append(hook)
            if not opts.clients:
                continue
            row = await stream_latency(setup, opts)
            row["run"] = run
            print(
                f"  {setup:<11} run {run}  {row['receipts']} receipts, missing {row['missing']}, "
                f"duplicates {row['duplicates']}, p50 {row['p50_ms']:.1f} ms, "
                f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms",
                flush=True,
            )
            rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument(
        "--store", action="append", choices=sorted(SETUPS), help="repeatable (default: both)"
    )
    parser.add_argument(
        "--clients", type=int, default=1000, help="WebSocket clients (1000; 0: no stream figure)"
    )
    parser.add_argument("--jobs", type=int, default=100, help="jobs completed per run (100)")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs submitted per second (10)")
    parser.add_argument("--runs", type=int, default=3, help="runs per store (3)")
    parser.add_argument(
        "--webhook-jobs", type=int, default=2000, help="completions delivered by webhook (2000)"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)
    args.store = args.store or list(SETUPS)
    return args


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = dt.datetime.now().astimezone()
    print(
        f"event streams: {opts.clients} WebSocket clients, {opts.jobs} jobs at {opts.rate}/s, "
        f"{started:%Y-%m-%d %H:%M %Z}",
        flush=True,
    )
    try:
        rows = asyncio.run(run_all(opts))
    except BenchError as exc:
        print(f"bench.events: error: {exc}", file=sys.stderr)
        return 1
    print(f"\nmedians of {opts.runs} run(s), completion to receipt:")
    print("| setup | clients | receipts missing | duplicates | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bad = False
    for setup in opts.store:
        mine = [r for r in rows if r["setup"] == setup and "p99_ms" in r]
        if not mine:
            continue
        p99 = _median(mine, "p99_ms")
        missing = sum(r["missing"] for r in mine)
        dupes = sum(r["duplicates"] + r["out_of_order"] for r in mine)
        bad |= bool(missing or dupes)
        print(
            f"| {setup} | {opts.clients} | {missing} | {dupes} | {_median(mine, 'p50_ms'):.1f} "
            f"| {p99:.1f} | {_median(mine, 'max_ms'):.1f} |"
        )
        verdict = "met" if p99 is not None and p99 <= LATENCY_GOAL_MS else "MISSED"
        print(f"  goal p99 <= {LATENCY_GOAL_MS:.0f} ms ({setup}): {verdict}")
    hooks = [r for r in rows if "bad_signatures" in r]
    if hooks:
        print("\nwebhook deliveries to one endpoint on loopback (median of the runs):")
        print("| setup | delivered | twice | bad signatures | deliveries/s |")
        print("|---|---:|---:|---:|---:|")
        for setup in opts.store:
            mine = [r for r in hooks if r["setup"] == setup]
            delivered = sum(r["deliveries"] for r in mine)
            expected = sum(r["expected"] for r in mine)
            twice = sum(r["duplicates"] for r in mine)
            wrong = sum(r["bad_signatures"] for r in mine)
            bad |= delivered != expected or bool(twice or wrong)
            print(
                f"| {setup} | {delivered}/{expected} | {twice} | {wrong} "
                f"| {_median(mine, 'rate') or 0:,.0f} |"
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
