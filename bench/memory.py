"""Idle worker memory: RSS of a ``conveyor worker`` subprocess after it has idled.

The worker serves the no-op queue with default settings and the bench kinds imported; it
counts as started once it has registered in the database, then idles ``idle_seconds``.
The CPU it used meanwhile is reported too (its notice polling and services).
"""

from __future__ import annotations

import asyncio
import time

import psutil

from bench import kinds
from bench.common import running_worker
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import StoreConfig
from conveyor import Client

MIB = 1024 * 1024
REFERENCE = Goal(
    "<=", 80.0, "DESIGN.md: an idle worker holds <= 80 MB RSS (read as MiB)", binding=False
)


async def idle_worker(store: StoreConfig, url: str, idle_s: float) -> dict[str, float]:
    client = await Client.connect(store.settings(url))
    async with client, running_worker(store, url, client, kinds.NOOP_QUEUE) as proc:
        process = psutil.Process(proc.pid)
        cpu0 = sum(process.cpu_times()[:2])
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        memory = process.memory_full_info()
        cpu = sum(process.cpu_times()[:2]) - cpu0
        elapsed = time.monotonic() - t0
    return {
        "rss_mb": memory.rss / MIB,
        "uss_mb": memory.uss / MIB,
        "idle_cpu_pct": 100 * cpu / elapsed,
    }


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    out: list[Case] = []
    for store in stores:
        if not store.default:
            continue
        row = Row(
            bench="idle worker memory (informational)",
            title="conveyor worker subprocess, idle",
            store=store.label,
            settings={"idle_s": opts.idle_seconds, "concurrency": 10},
            metrics=[
                Metric("rss_mb", "RSS", "MiB", REFERENCE),
                Metric("uss_mb", "USS (memory unique to it)", "MiB"),
                Metric("idle_cpu_pct", "CPU while idle", "%"),
            ],
        )

        async def measure(s: StoreConfig = store) -> dict[str, float]:
            with s.fresh_database() as url:
                return await idle_worker(s, url, opts.idle_seconds)

        out.append(Case(row, measure, opts.rss_runs))
    return out
