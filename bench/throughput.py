"""Processing throughput: one worker drains a queue of no-op jobs.

The jobs are enqueued in bulk first (not timed). Then, two ways:

- in-process: ``await Worker(store, config).run(burst=True)`` timed from the call to its
  return (start-up, the drain and the final settle, unregistering included);
- subprocess: a real ``conveyor worker --burst --import bench.kinds`` timed from spawn to
  exit (interpreter start-up and imports included), and, to leave those out, the rate from
  the jobs' own timestamps in the database: first ``started_at`` (claim) to last
  ``finished_at`` (recorded completion).

The in-process run also reports its database span, for comparison with the subprocess.
"""

from __future__ import annotations

import tempfile
import time

from bench import kinds
from bench.common import enqueue_noop, spawn_worker, tail, worker_args
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import BenchError, JobSpan, StoreConfig
from conveyor import Worker, WorkerConfig
from conveyor.store import make_store

GOAL = Goal(">=", 5_000, "DESIGN.md: SQLite (durable), one worker process >= 5,000 no-op jobs/s")
BATCH = 10_000


async def in_process(store: StoreConfig, url: str, n: int, concurrency: int) -> dict[str, float]:
    """Drain ``n`` no-op jobs with a :class:`Worker` in this process."""
    settings = store.settings(url)
    await enqueue_noop(settings, n, BATCH)
    worker_store = make_store(settings)
    await worker_store.open()
    try:
        await worker_store.migrate()
        config = WorkerConfig.from_settings(settings, [kinds.NOOP_QUEUE], concurrency)
        worker = Worker(worker_store, config)
        t0 = time.perf_counter()
        await worker.run(burst=True)
        elapsed = time.perf_counter() - t0
    finally:
        await worker_store.close()
    span = _checked_span(store, url, n)
    return {
        "rate": n / elapsed,
        "span_rate": span.rate,
        "seconds": elapsed,
        "max_running": float(worker.max_seen_running),
    }


async def subprocess_worker(
    store: StoreConfig, url: str, n: int, concurrency: int
) -> dict[str, float]:
    """Drain ``n`` no-op jobs with a ``conveyor worker --burst`` subprocess."""
    await enqueue_noop(store.settings(url), n, BATCH)
    with tempfile.TemporaryFile() as stderr:
        t0 = time.perf_counter()
        proc = await spawn_worker(
            store, url, worker_args(kinds.NOOP_QUEUE, concurrency, burst=True), stderr
        )
        code = await proc.wait()
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise BenchError(f"conveyor worker exited with {code}:\n{tail(stderr)}")
    span = _checked_span(store, url, n)
    return {
        "rate": n / elapsed,
        "span_rate": span.rate,
        "seconds": elapsed,
        "outside_span_s": elapsed - span.seconds,
    }


def _checked_span(store: StoreConfig, url: str, n: int) -> JobSpan:
    span = store.job_span(url)
    if span.completed != n:
        raise BenchError(f"{n} jobs enqueued but {span.completed} completed")
    return span


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    out: list[Case] = []
    headline = opts.concurrency[0]
    for store in stores:
        for concurrency in opts.concurrency:
            if not store.default and concurrency != headline:
                continue
            goal = GOAL if store.default and concurrency == headline else None
            settings = {"jobs": opts.throughput_jobs, "concurrency": concurrency}
            inproc = Row(
                bench="throughput",
                title="in-process Worker.run(burst=True)",
                store=store.label,
                settings=settings,
                metrics=[
                    Metric("rate", "run() call to return", "jobs/s", goal),
                    Metric("span_rate", "first claim to last completion", "jobs/s"),
                ],
            )
            sub = Row(
                bench="throughput",
                title="conveyor worker --burst subprocess",
                store=store.label,
                settings=settings,
                metrics=[
                    Metric("rate", "spawn to exit", "jobs/s"),
                    Metric("span_rate", "first claim to last completion", "jobs/s", goal),
                    Metric("outside_span_s", "outside the span (start-up, exit)", "s"),
                ],
            )

            async def run_inproc(s: StoreConfig = store, c: int = concurrency) -> dict[str, float]:
                with s.fresh_database() as url:
                    return await in_process(s, url, opts.throughput_jobs, c)

            async def run_sub(s: StoreConfig = store, c: int = concurrency) -> dict[str, float]:
                with s.fresh_database() as url:
                    return await subprocess_worker(s, url, opts.throughput_jobs, c)

            out += [Case(inproc, run_inproc, opts.runs), Case(sub, run_sub, opts.runs)]
    return out
