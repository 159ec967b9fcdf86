"""Throughput with many tenants: one ``conveyor worker --burst`` subprocess at its
defaults drains no-op jobs spread over 1 tenant, then over 100 (issue 12: 100 active
tenants >= 0.8 x one tenant's jobs/s).

The jobs are enqueued in bulk first, round-robin over the tenants (every tenant has jobs
waiting throughout the drain, so every claim takes turns among all of them), then
(PostgreSQL) ``ANALYZE conveyor_jobs``: neither is timed. The figure is the rate from the
jobs' own timestamps, first claim to last completion, as the throughput benchmark's.

Run alone with ``python -m bench --only tenants``. To compare the code before and after
a change, run the same cases on two checkouts, alternated (see :mod:`bench.against`).
"""

from __future__ import annotations

import tempfile
import time
from typing import IO

from bench import kinds
from bench.common import spawn_worker, stop_process, tail, worker_args
from bench.report import Case, Metric, Options, Row
from bench.stores import BenchError, StoreConfig, span_of
from bench.throughput import BATCH, DEFAULTS_ENV
from conveyor import Client

TENANTS = (1, 100)


def tenant_name(i: int, tenants: int) -> str:
    return f"tenant-{i % tenants:03d}"


async def fill_tenants(store: StoreConfig, url: str, n: int, tenants: int) -> None:
    """Queue ``n`` no-op jobs, round-robin over ``tenants`` tenants (untimed)."""
    client = await Client.connect(store.settings(url))
    async with client:
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            await client.enqueue_many(
                client.prepare(kinds.NOOP, tenant_id=tenant_name(start + i, tenants))
                for i in range(count)
            )
    await store.backend.after_fill(url)


async def drain(store: StoreConfig, url: str, n: int, tenants: int) -> dict[str, float]:
    """Fill, then drain with one worker subprocess at its defaults."""
    await fill_tenants(store, url, n, tenants)
    args = worker_args(kinds.NOOP_QUEUE, None, burst=True)
    with tempfile.TemporaryFile() as err:
        errs: IO[bytes] = err
        t0 = time.perf_counter()
        proc = await spawn_worker(store, url, args, errs, DEFAULTS_ENV)
        try:
            code = await proc.wait()
        finally:
            await stop_process(proc)
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise BenchError(f"conveyor worker exited with {code}:\n{tail(errs)}")
    span = span_of(await store.backend.completions(url))
    if span.completed != n:
        raise BenchError(f"{n} jobs enqueued but {span.completed} completed")
    return {"rate": n / elapsed, "span_rate": span.rate, "seconds": elapsed}


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    """Per store (its default setting only), one row per number of tenants."""
    out: list[Case] = []
    for store in stores:
        if not store.default:
            continue
        for tenants in TENANTS:
            row = Row(
                bench="tenants",
                title=f"one conveyor worker --burst subprocess at its defaults, {tenants} "
                f"tenant{'s' if tenants > 1 else ''}",
                store=store.label,
                settings={
                    "jobs": opts.throughput_jobs,
                    "tenants": tenants,
                    "concurrency": "default",
                    "log level": "INFO",
                },
                metrics=[
                    Metric("span_rate", "first claim to last completion", "jobs/s"),
                    Metric("rate", "spawn to exit", "jobs/s"),
                ],
            )

            async def run(store: StoreConfig = store, tenants: int = tenants) -> dict[str, float]:
                async with store.fresh_database() as url:
                    return await drain(store, url, opts.throughput_jobs, tenants)

            out.append(Case(row, run, opts.runs))
    return out
