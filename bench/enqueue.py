"""Bulk enqueue: ``Client.enqueue_many(client.prepare(...) for ...)`` in batches.

The clock runs around the whole loop, ``prepare`` (validation and defaults) included, as a
user pays it; the time inside ``enqueue_many`` alone is reported beside it.
"""

from __future__ import annotations

import time

from bench import kinds
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import BenchError, StoreConfig
from conveyor import Client

GOALS = {
    "sqlite": Goal(">=", 50_000, "DESIGN.md: SQLite (durable) bulk enqueue >= 50,000 jobs/s"),
    "postgresql": Goal(">=", 70_000, "DESIGN.md: PostgreSQL bulk enqueue >= 70,000 jobs/s"),
}


async def bulk_enqueue(store: StoreConfig, url: str, n: int, batch: int) -> dict[str, float]:
    """Enqueue ``n`` no-op jobs into the empty database at ``url``; jobs per second."""
    client = await Client.connect(store.settings(url))
    in_store = 0.0
    async with client:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            jobs = [client.prepare(kinds.NOOP) for _ in range(min(batch, n - start))]
            t1 = time.perf_counter()
            await client.enqueue_many(jobs)
            in_store += time.perf_counter() - t1
        elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "store_rate": n / in_store, "seconds": elapsed}


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    out = []
    for store in stores:
        row = Row(
            bench="bulk enqueue",
            title=f"{opts.enqueue_jobs:,} no-op jobs, enqueue_many in batches",
            store=store.label,
            settings={"jobs": opts.enqueue_jobs, "batch": opts.enqueue_batch},
            metrics=[
                Metric(
                    "rate",
                    "prepare + enqueue_many",
                    "jobs/s",
                    GOALS.get(store.kind) if store.default else None,
                ),
                Metric("store_rate", "inside enqueue_many only", "jobs/s"),
            ],
        )

        async def measure(store: StoreConfig = store) -> dict[str, float]:
            async with store.fresh_database() as url:
                result = await bulk_enqueue(store, url, opts.enqueue_jobs, opts.enqueue_batch)
                queued = await _count_queued(store, url)
            if queued != opts.enqueue_jobs:
                raise BenchError(f"enqueued {opts.enqueue_jobs} jobs but {queued} are queued")
            return result

        out.append(Case(row, measure, opts.runs))
    return out


async def _count_queued(store: StoreConfig, url: str) -> int:
    client = await Client.connect(store.settings(url), migrate=False)
    async with client:
        stats = {q.name: q for q in await client.queues()}
    queue = stats.get(kinds.NOOP_QUEUE)
    return queue.counts["queued"] if queue else 0
