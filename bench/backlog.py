"""Throughput under a large backlog: with 1,000,000 jobs queued, as a fraction of the
throughput with 10,000 queued.

Each run fills two fresh databases with no-op jobs in the one queue the worker serves
(bulk enqueue in batches of 10,000, then — PostgreSQL — ``ANALYZE conveyor_jobs``; none of
it timed): the backlog (1,000,000) and the baseline (10,000). Then it takes ``pairs``
(6) pairs of measurements, one in each database, back to back, which of the two goes first
alternating from pair to pair. A measurement starts a new ``conveyor worker`` subprocess
(not ``--burst``, which would drain the whole backlog), watches until 10,000 more jobs have
finished, and stops it with SIGTERM; its rate is read from the database: 10,000 over the
time from its first claim (``started_at``) to its 10,000th completion (``finished_at``),
so start-up and stopping late do not count. Between pairs the baseline is topped up to
10,000 queued again (and analysed), and — PostgreSQL — a ``CHECKPOINT`` and a one-second
pause keep the write-back of the fills out of the measurements (without it the first
measurement after a fill was 10-25 % slower, whichever database it was in).

The baseline thus drains 10,000 queued jobs six times; the backlog run takes 60,000 of
the 1,000,000 (never fewer than 940,000 queued). The figure of a run is the ratio of the
two rates over all pairs (completions per second of all measurements of each); the
worst single pair and the slowest backlog window are reported beside it, since a cliff
(the planner or JIT changing its mind as the table grows) shows there first. The row
figure is the median over runs.

PostgreSQL is also measured with ``jit = off`` set on the bench databases (informational,
with the opt-in variants): the server's default ``jit = on`` compiles any statement whose
estimated cost passes ``jit_above_cost`` (100,000), and the claim's estimate grows with the
table.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import replace

from bench import kinds
from bench.common import fill, spawn_worker, stop_process, tail, worker_args
from bench.report import Case, Goal, Metric, Options, Row
from bench.stores import BenchError, StoreConfig, span_of

GOAL = Goal(
    ">=",
    0.95,
    "DESIGN.md: throughput with 1,000,000 queued >= 0.95 x throughput with 10,000 queued",
)
POLL_S = 0.05
SETTLE_S = 1.0
TIMEOUT_S = 300.0
BATCH = 10_000


async def first_completions(
    store: StoreConfig, url: str, n: int, concurrency: int
) -> dict[str, float]:
    """Run a new worker subprocess on the filled queue at ``url`` until at least ``n`` more
    jobs finished; the rate of its first ``n`` completions from the database, and how many
    jobs it ran in all (it finishes those it holds when stopped).

    The worker claims in id order (one priority, ``run_at`` rising with the id), so once
    job ``first + n - 1`` has finished, ``n`` jobs have been claimed, and SIGTERM lets the
    worker finish what it holds: the bench watches that one job (a primary-key look-up
    every 50 ms, as cheap with 1,000,000 rows as with 10,000) and checks the count
    afterwards."""
    args = worker_args(kinds.NOOP_QUEUE, concurrency, burst=False)
    async with store.backend.watcher(url) as watch:
        first = await watch.first_queued_id()
        target = first + n - 1
        with tempfile.TemporaryFile() as stderr:
            t0 = time.perf_counter()
            proc = await spawn_worker(store, url, args, stderr)
            try:
                while not await watch.finished(target):
                    if proc.returncode is not None:
                        raise BenchError(
                            f"conveyor worker exited with {proc.returncode}:\n{tail(stderr)}"
                        )
                    if time.perf_counter() - t0 > TIMEOUT_S:
                        raise BenchError(f"{n} jobs not finished after {TIMEOUT_S:g} s")
                    await asyncio.sleep(POLL_S)
            finally:
                await stop_process(proc)
    mine = await store.backend.completions(url, min_id=first)
    span = span_of(mine, first_n=n)
    if span.completed < n:
        raise BenchError(f"expected at least {n} completed jobs, found {span.completed}")
    return {"rate": span.rate, "seconds": span.seconds, "taken": float(len(mine))}


def _aggregate(measurements: list[dict[str, float]]) -> float:
    """Completions per second over several measurements of the same count."""
    return len(measurements) / sum(1 / m["rate"] for m in measurements)


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    if opts.backlog_measured > opts.backlog_base:
        raise BenchError("--backlog-measured cannot exceed --backlog-base")
    out: list[Case] = []
    for store in stores:
        if not store.default:
            continue
        out.append(_case(store, opts, GOAL))
        if store.kind == "postgresql" and opts.opt_in:
            # The same with JIT compilation off for the bench databases: see the note.
            no_jit = replace(
                store,
                label=f"{store.label} jit=off (ALTER DATABASE)",
                default=False,
                database_settings={**store.database_settings, "jit": "off"},
            )
            case = _case(no_jit, opts, None)
            case.row.note = (
                "informational: the server's jit setting (default on) compiles a statement "
                "whose estimated cost passes jit_above_cost; the claim's estimate grows with "
                "the table"
            )
            out.append(case)
    return out


def _case(store: StoreConfig, opts: Options, goal: Goal | None) -> Case:
    concurrency = (opts.concurrency or store.backend.default_concurrency)[0]
    row = Row(
        bench="backlog",
        title=f"throughput with {opts.backlog_jobs:,} queued / with {opts.backlog_base:,}",
        store=store.label,
        settings={
            "backlog": opts.backlog_jobs,
            "base": opts.backlog_base,
            "measured": opts.backlog_measured,
            "pairs": opts.backlog_pairs,
            "concurrency": concurrency,
        },
        metrics=[
            Metric("ratio", "ratio (all pairs, backlog / base)", "ratio", goal),
            Metric("worst_ratio", "ratio of the worst pair", "ratio"),
            Metric("backlog_rate", f"rate with {opts.backlog_jobs:,} queued", "jobs/s"),
            Metric("base_rate", f"rate with {opts.backlog_base:,} queued", "jobs/s"),
            Metric("slowest_backlog", "slowest backlog window", "jobs/s"),
            Metric("fill_s", "backlog fill + ANALYZE (untimed set-up)", "s"),
        ],
    )

    async def measure() -> dict[str, float]:
        n = opts.backlog_measured
        big_runs: list[dict[str, float]] = []
        base_runs: list[dict[str, float]] = []
        async with store.fresh_database() as big, store.fresh_database() as base:
            t0 = time.perf_counter()
            await fill(store, big, opts.backlog_jobs, BATCH)
            fill_s = time.perf_counter() - t0
            await fill(store, base, opts.backlog_base, BATCH)
            for pair in range(opts.backlog_pairs):
                if pair:
                    # Top the baseline up to its queued count again.
                    await fill(store, base, int(base_runs[-1]["taken"]), BATCH)
                await store.backend.checkpoint()
                await asyncio.sleep(SETTLE_S)
                order = [(base, base_runs), (big, big_runs)]
                for url, runs in order[:: 1 if pair % 2 == 0 else -1]:
                    runs.append(await first_completions(store, url, n, concurrency))
        big_rate = _aggregate(big_runs)
        base_rate = _aggregate(base_runs)
        return {
            "ratio": big_rate / base_rate,
            "worst_ratio": min(
                b["rate"] / a["rate"] for a, b in zip(base_runs, big_runs, strict=True)
            ),
            "backlog_rate": big_rate,
            "base_rate": base_rate,
            "slowest_backlog": min(b["rate"] for b in big_runs),
            "fill_s": fill_s,
        }

    return Case(row, measure, opts.backlog_runs)
