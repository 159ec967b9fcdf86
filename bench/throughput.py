"""Processing throughput: worker processes drain a queue of no-op jobs.

The jobs are enqueued in bulk first, then (PostgreSQL) ``ANALYZE conveyor_jobs``: neither
is timed. Then, three ways:

- in-process: ``await Worker(store, config).run(burst=True)`` timed from the call to its
  return (start-up, the drain and the final settle, unregistering included);
- one subprocess: a real ``conveyor worker --burst --import bench.kinds`` timed from spawn
  to exit (interpreter start-up and imports included), and, to leave those out, the rate
  from the jobs' own timestamps in the database: first ``started_at`` (claim) to last
  ``finished_at`` (recorded completion);
- two subprocesses, spawned together, each with the same concurrency: the same two
  figures (spawn of the first to exit of the last; first claim to last completion), and
  the rate while both were working (from the later worker's first claim to the earlier
  worker's last completion), which leaves out the moments only one of them ran.

The in-process run also reports its database span, for comparison with the subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from typing import IO

from bench import kinds
from bench.common import fill, spawn_worker, stop_process, tail, worker_args
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import BenchError, JobSpan, StoreConfig, overlap_rate, span_of
from conveyor import Worker, WorkerConfig
from conveyor.store import make_store

GOALS = {
    "sqlite": Goal(">=", 5_000, "DESIGN.md: SQLite (durable), one worker process >= 5,000 jobs/s"),
    "postgresql": Goal(
        ">=",
        6_500,
        "DESIGN.md: PostgreSQL, one worker process >= 6,500 no-op jobs/s (goal 10,000)",
    ),
}
GOALS_TWO = {
    "postgresql": Goal(
        ">=", 9_000, "DESIGN.md: PostgreSQL, two worker processes >= 9,000 no-op jobs/s"
    ),
}
BATCH = 10_000


async def in_process(store: StoreConfig, url: str, n: int, concurrency: int) -> dict[str, float]:
    """Drain ``n`` no-op jobs with a :class:`Worker` in this process."""
    settings = store.settings(url)
    await fill(store, url, n, BATCH)
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
    span = await _checked_span(store, url, n)
    return {
        "rate": n / elapsed,
        "span_rate": span.rate,
        "seconds": elapsed,
        "max_running": float(worker.max_seen_running),
    }


DEFAULTS_ENV = {"CONVEYOR_LOG_LEVEL": "INFO"}
"""What a worker at its defaults runs with beside the store's settings: the bench's
subprocesses otherwise log at WARNING."""


async def subprocess_workers(
    store: StoreConfig, url: str, n: int, concurrency: int | None, processes: int = 1
) -> dict[str, float]:
    """Drain ``n`` no-op jobs with ``processes`` ``conveyor worker --burst`` subprocesses
    spawned together; ``concurrency`` None: every setting at its default (logs at INFO
    included), as a user runs it."""
    await fill(store, url, n, BATCH)
    args = worker_args(kinds.NOOP_QUEUE, concurrency, burst=True)
    env = DEFAULTS_ENV if concurrency is None else None
    with contextlib.ExitStack() as stack:
        errs: list[IO[bytes]] = [
            stack.enter_context(tempfile.TemporaryFile()) for _ in range(processes)
        ]
        t0 = time.perf_counter()
        procs = [await spawn_worker(store, url, args, err, env) for err in errs]
        try:
            codes = await asyncio.gather(*(proc.wait() for proc in procs))
        finally:
            for proc in procs:
                await stop_process(proc)
        elapsed = time.perf_counter() - t0
        for code, err in zip(codes, errs, strict=True):
            if code != 0:
                raise BenchError(f"conveyor worker exited with {code}:\n{tail(err)}")
    completions = await store.backend.completions(url)
    span = span_of(completions)
    if span.completed != n:
        raise BenchError(f"{n} jobs enqueued but {span.completed} completed")
    result = {
        "rate": n / elapsed,
        "span_rate": span.rate,
        "seconds": elapsed,
        "outside_span_s": elapsed - span.seconds,
    }
    if processes > 1:
        result["overlap_rate"], result["min_share"] = overlap_rate(completions)
    return result


async def _checked_span(store: StoreConfig, url: str, n: int) -> JobSpan:
    span = await store.job_span(url)
    if span.completed != n:
        raise BenchError(f"{n} jobs enqueued but {span.completed} completed")
    return span


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    """Per store: a worker subprocess at its defaults (the rows the targets are judged
    on), then the tuned rows at each concurrency asked for."""
    out: list[Case] = []
    for store in stores:
        if store.default:
            out.append(_defaults_case(store, opts))
        levels = opts.concurrency or store.backend.default_concurrency
        headline = levels[0]
        for concurrency in levels:
            if not store.default and concurrency != headline:
                continue
            out += _one_worker_cases(store, opts, concurrency)
        if opts.two_workers and store.default:
            out.append(_two_workers_case(store, opts, None))
            out.append(_two_workers_case(store, opts, headline))
    return out


def _defaults_case(store: StoreConfig, opts: Options) -> Case:
    row = Row(
        bench="throughput",
        title="one conveyor worker --burst subprocess, every setting at its default",
        store=store.label,
        settings={"jobs": opts.throughput_jobs, "concurrency": "default", "log level": "INFO"},
        metrics=[
            Metric("rate", "spawn to exit", "jobs/s"),
            Metric("span_rate", "first claim to last completion", "jobs/s", GOALS.get(store.kind)),
            Metric("outside_span_s", "outside the span (start-up, exit)", "s"),
        ],
    )

    async def run() -> dict[str, float]:
        async with store.fresh_database() as url:
            return await subprocess_workers(store, url, opts.throughput_jobs, None)

    return Case(row, run, opts.runs)


def _one_worker_cases(store: StoreConfig, opts: Options, concurrency: int) -> list[Case]:
    settings = {"jobs": opts.throughput_jobs, "concurrency": concurrency, "log level": "WARNING"}
    inproc = Row(
        bench="throughput",
        title="in-process Worker.run(burst=True)",
        store=store.label,
        settings=settings,
        metrics=[
            Metric("rate", "run() call to return", "jobs/s"),
            Metric("span_rate", "first claim to last completion", "jobs/s"),
        ],
    )
    sub = Row(
        bench="throughput",
        title="one conveyor worker --burst subprocess",
        store=store.label,
        settings=settings,
        metrics=[
            Metric("rate", "spawn to exit", "jobs/s"),
            Metric("span_rate", "first claim to last completion", "jobs/s"),
            Metric("outside_span_s", "outside the span (start-up, exit)", "s"),
        ],
    )

    async def run_inproc() -> dict[str, float]:
        async with store.fresh_database() as url:
            return await in_process(store, url, opts.throughput_jobs, concurrency)

    async def run_sub() -> dict[str, float]:
        async with store.fresh_database() as url:
            return await subprocess_workers(store, url, opts.throughput_jobs, concurrency)

    return [Case(inproc, run_inproc, opts.runs), Case(sub, run_sub, opts.runs)]


def _two_workers_case(store: StoreConfig, opts: Options, concurrency: int | None) -> Case:
    """Two subprocesses; ``concurrency`` None: at their defaults, the row the target is
    judged on."""
    defaults = concurrency is None
    row = Row(
        bench="throughput",
        title="two conveyor worker --burst subprocesses"
        + (", every setting at its default" if defaults else ""),
        store=store.label,
        settings={
            "jobs": opts.throughput_jobs,
            "concurrency": "default" if defaults else f"{concurrency} each",
            "log level": "INFO" if defaults else "WARNING",
        },
        metrics=[
            Metric("rate", "first spawn to last exit", "jobs/s"),
            Metric(
                "span_rate",
                "first claim to last completion",
                "jobs/s",
                GOALS_TWO.get(store.kind) if defaults else None,
            ),
            Metric("overlap_rate", "while both were working", "jobs/s"),
            Metric("min_share", "share of the jobs the less busy ran", "ratio"),
            Metric("outside_span_s", "outside the span (start-up, exit)", "s"),
        ],
    )

    async def run() -> dict[str, float]:
        async with store.fresh_database() as url:
            return await subprocess_workers(store, url, opts.throughput_jobs, concurrency, 2)

    return Case(row, run, opts.runs)
