"""``python -m bench``: run the benchmarks, print a report, write bench/results/*.json.

Runs are interleaved (run 1 of every configuration, then run 2, ...) so that a noisy spell
on the shared machine spreads over all figures instead of spoiling one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson

from bench import backlog, enqueue, http_load, latency, memory, tenants, throughput
from bench.report import (
    Case,
    Options,
    Row,
    header,
    machine_info,
    markdown,
    render,
    rows_from_json,
    summary,
    write_json,
)
from bench.stores import (
    DEFAULT_POSTGRES_URL,
    STORES,
    Backend,
    BenchError,
    StoreConfig,
    make_backend,
)
from conveyor.logs import configure_logging

BENCHMARKS: dict[str, Callable[[list[StoreConfig], Options], list[Case]]] = {
    "enqueue": enqueue.cases,
    "throughput": throughput.cases,
    "latency": latency.cases,
    "backlog": backlog.cases,
    "rss": memory.cases,
    "tenants": tenants.cases,
}

HTTP = "http"
"""``POST /v1/requests`` under load: :mod:`bench.http_load`, which starts its own servers and
prints its own report (``python -m bench.http_load --help`` for its options)."""

QUICK = Options(
    enqueue_jobs=20_000,
    throughput_jobs=5_000,
    runs=2,
    latency_runs=1,
    latency_samples=100,
    latency_warmup=10,
    rss_runs=1,
    idle_seconds=3.0,
    idle_settle_seconds=2.0,
    backlog_jobs=50_000,
    backlog_base=2_000,
    backlog_measured=2_000,
    backlog_runs=1,
    backlog_pairs=1,
    quick=True,
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1")
    return values


def _setting(text: str) -> str:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip() or not name.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. jit=off")
    return f"{name.strip()}={value.strip()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Conveyor's throughput and latency benchmarks (see docs/benchmarks.md).",
    )
    parser.add_argument(
        "--store",
        action="append",
        choices=[*STORES, "all"],
        help="store to measure (repeatable; default all: sqlite and postgresql, the latter "
        "skipped with a message if its server cannot be reached)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL admin URL: a fresh database conveyor_bench_<random> is created on "
        f"its server per run and dropped after (default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted([*BENCHMARKS, HTTP]),
        help="run only this benchmark (repeatable; default all). http runs "
        "bench.http_load (its own processes and report) on the stores asked for",
    )
    parser.add_argument("--quick", action="store_true", help="smaller N and fewer runs")
    parser.add_argument("--runs", type=int, help="runs per enqueue/throughput figure (5)")
    parser.add_argument("--latency-runs", type=int, help="runs per latency figure (3)")
    parser.add_argument("--enqueue-jobs", type=int, help="jobs per bulk-enqueue run (100,000)")
    parser.add_argument("--batch", type=int, help="jobs per enqueue_many call (10,000)")
    parser.add_argument("--jobs", type=int, help="no-op jobs per throughput run (20,000)")
    parser.add_argument(
        "--concurrency",
        type=_ints,
        help="worker concurrency for throughput, comma-separated; the first is the "
        "headline (100,10)",
    )
    parser.add_argument(
        "--pg-worker-setting",
        action="append",
        metavar="NAME=VALUE",
        type=_setting,
        help="experiment: a PostgreSQL setting for the conveyor worker subprocesses only "
        "(e.g. synchronous_commit=off); repeatable; labels the PostgreSQL rows",
    )
    parser.add_argument(
        "--one-worker-only", action="store_true", help="skip the two-worker-process rows"
    )
    parser.add_argument("--samples", type=int, help="latency samples per run (500)")
    parser.add_argument("--backlog", type=int, help="jobs queued for the backlog (1,000,000)")
    parser.add_argument("--backlog-base", type=int, help="jobs queued for its baseline (10,000)")
    parser.add_argument(
        "--backlog-measured", type=int, help="completions measured in both (10,000)"
    )
    parser.add_argument(
        "--backlog-pairs", type=int, help="(backlog, base) measurements per backlog run (6)"
    )
    parser.add_argument("--backlog-runs", type=int, help="runs of the backlog figure (3)")
    parser.add_argument("--rss-runs", type=int, help="runs of the idle worker figures (3)")
    parser.add_argument("--idle", type=float, help="idle window, seconds (10)")
    parser.add_argument(
        "--durable-only",
        action="store_true",
        help="skip the opt-in variants (SQLite synchronous=NORMAL, PostgreSQL jit=off in "
        "the backlog benchmark)",
    )
    parser.add_argument("--tmpdir", help="folder for the SQLite files (default: system temp)")
    parser.add_argument("--seed", type=int, help="seed of the latency gaps (1)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    parser.add_argument("--note", help="free text for the report and the JSON file")
    parser.add_argument(
        "--markdown", action="store_true", help="also print the results as a Markdown table"
    )
    parser.add_argument(
        "--markdown-from",
        metavar="RESULTS.json",
        help="run nothing: print the Markdown table of a results file",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    opts = QUICK if args.quick else Options()
    overrides = {
        "runs": args.runs,
        "latency_runs": args.latency_runs,
        "enqueue_jobs": args.enqueue_jobs,
        "enqueue_batch": args.batch,
        "throughput_jobs": args.jobs,
        "concurrency": args.concurrency,
        "latency_samples": args.samples,
        "seed": args.seed,
        "backlog_jobs": args.backlog,
        "backlog_base": args.backlog_base,
        "backlog_measured": args.backlog_measured,
        "backlog_runs": args.backlog_runs,
        "backlog_pairs": args.backlog_pairs,
        "rss_runs": args.rss_runs,
        "idle_seconds": args.idle,
    }
    opts = replace(opts, **{k: v for k, v in overrides.items() if v is not None})
    if args.durable_only:
        opts = replace(opts, opt_in=False)
    if args.one_worker_only:
        opts = replace(opts, two_workers=False)
    for name in (
        "runs",
        "latency_runs",
        "enqueue_jobs",
        "enqueue_batch",
        "throughput_jobs",
        "backlog_jobs",
        "backlog_base",
        "backlog_measured",
        "backlog_runs",
        "backlog_pairs",
        "rss_runs",
    ):
        if getattr(opts, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
    return opts


async def make_backends(args: argparse.Namespace) -> tuple[list[Backend], list[str]]:
    """The backends asked for; with the default (all), PostgreSQL is skipped with a
    message when its server cannot be reached, while an explicit --store postgresql
    fails."""
    asked = args.store or ["all"]
    names = [n for n in STORES if n in asked or "all" in asked]
    backends: list[Backend] = []
    skipped: list[str] = []
    for name in names:
        try:
            backends.append(
                await make_backend(name, tmpdir=args.tmpdir, postgres_url=args.postgres_url)
            )
        except BenchError as exc:
            if name in asked:
                raise
            skipped.append(f"{name}: {exc}")
    return backends, skipped


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_cases(cases: list[Case]) -> None:
    """Interleave the runs: run i of every case before run i + 1 of any."""
    total = sum(case.runs for case in cases)
    done = 0
    for i in range(max((case.runs for case in cases), default=0)):
        for case in cases:
            if i >= case.runs:
                continue
            row = case.row
            t0 = time.perf_counter()
            result = await case.measure()
            row.runs.append(result)
            done += 1
            first = row.metrics[0]
            progress(
                f"[{done}/{total}] {row.bench}: {row.title} [{row.store}; "
                f"{', '.join(f'{k}={v}' for k, v in row.settings.items())}] run {i + 1}: "
                f"{first.label} {result[first.key]:,.2f} {first.unit} "
                f"({time.perf_counter() - t0:.1f} s)"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown_from:
        data = orjson.loads(Path(args.markdown_from).read_bytes())
        print(markdown(rows_from_json(data)))
        return 0
    # Only the bench's own settings apply: CONVEYOR_* from the caller (the Makefile exports
    # CONVEYOR_IMPORTS) would change what is measured.
    ignored = sorted(k for k in os.environ if k.startswith("CONVEYOR_"))
    for key in ignored:
        del os.environ[key]
    configure_logging("WARNING", "json")
    try:
        opts = options_from(args)
        backends, skipped = asyncio.run(make_backends(args))
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    stores = [config for b in backends for config in b.variants(opts.opt_in)]
    if args.pg_worker_setting:
        worker_settings = dict(item.split("=", 1) for item in args.pg_worker_setting)
        label = ", ".join(f"{k}={v}" for k, v in worker_settings.items())
        stores = [
            replace(s, label=f"{s.label} (workers: {label})", worker_settings=worker_settings)
            if s.kind == "postgresql"
            else s
            for s in stores
        ]
    described = [b.describe() for b in backends]
    machine = machine_info()
    machine["ignored_environment"] = ignored
    machine["note"] = args.note or ""
    print(header(machine, described, opts), flush=True)
    if ignored:
        print(f"  ignored   {', '.join(ignored)} (the bench sets its own)", flush=True)
    if args.note:
        print(f"  note      {args.note}", flush=True)
    for message in skipped:
        print(f"  SKIPPED   {message}", flush=True)
    machine["skipped"] = skipped

    rows: list[Row] = []
    failed = False
    for name in args.only or [*BENCHMARKS, HTTP]:
        if name == HTTP:
            failed |= _http(args, [b.name for b in backends]) != 0
            continue
        chosen = [s for s in stores if s.benchmarks is None or name in s.benchmarks]
        cases = BENCHMARKS[name](chosen, opts)
        rows += [case.row for case in cases]
        try:
            asyncio.run(run_cases(cases))
        except Exception:
            failed = True
            progress(f"bench: {name} failed:\n{traceback.format_exc()}")
    print(render(rows))
    print(summary(rows))
    if args.markdown:
        print(f"\n{markdown(rows)}")
    if not args.no_json:
        path = write_json(machine, described, opts, rows, dt.datetime.now().astimezone())
        print(f"\nresults written to {path}")
    return 1 if failed else 0


def _http(args: argparse.Namespace, stores: list[str]) -> int:
    """Run the HTTP load benchmark on the stores asked for; its exit status."""
    argv = ["--postgres-url", args.postgres_url]
    for store in stores:
        argv += ["--setup", store]
    if args.tmpdir:
        argv += ["--tmpdir", args.tmpdir]
    if args.quick:
        argv.append("--quick")
    if args.no_json:
        argv.append("--no-json")
    print(flush=True)
    return http_load.main(argv)


if __name__ == "__main__":
    sys.exit(main())
