"""Rows of results, the targets they are held to, the printed report and the JSON file."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.stores import REPO_ROOT

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Options:
    """Every knob of a run; printed in the report and stored in the JSON file."""

    enqueue_jobs: int = 100_000
    enqueue_batch: int = 10_000
    throughput_jobs: int = 20_000
    concurrency: tuple[int, ...] | None = None
    """Worker concurrency for the no-op queue; the first is the headline setting. None:
    each store's own rows (SQLite 100 and 10, PostgreSQL 100 and 500)."""
    two_workers: bool = True
    """Also drain the queue with two worker processes (at the headline concurrency)."""
    runs: int = 5
    """Runs per figure for enqueue and throughput (each on a fresh database)."""
    latency_runs: int = 3
    latency_samples: int = 500
    latency_warmup: int = 20
    latency_gap_ms: tuple[float, float] = (5.0, 25.0)
    """Random pause before each enqueue, so the worker is idle when the job arrives."""
    cross_gap_ms: tuple[float, float] = (5.0, 55.0)
    """The same across processes: at least one poll interval wide, so jobs arrive at a
    random point of the worker's polling cycle instead of in step with it."""
    rss_runs: int = 3
    idle_seconds: float = 10.0
    """The idle window: RSS is read at its end; PostgreSQL statements are counted in it."""
    idle_settle_seconds: float = 11.0
    """PostgreSQL: idle time before the window, after the worker registered. Longer than
    the 10 s a backend may hold back its statistics (``pg_stat_database``), so start-up
    statements are not counted in the window."""
    backlog_jobs: int = 1_000_000
    """Jobs queued for the backlog benchmark."""
    backlog_base: int = 10_000
    """Jobs queued for its baseline."""
    backlog_measured: int = 10_000
    """Completions measured in both (at most ``backlog_base``)."""
    backlog_pairs: int = 6
    """Measurements of each (backlog, baseline) per run, alternating which goes first."""
    backlog_runs: int = 3
    opt_in: bool = True
    """Also measure the store's opt-in (non-durable) setting."""
    seed: int = 1
    quick: bool = False


@dataclass(frozen=True, slots=True)
class Goal:
    """A figure from DESIGN.md's performance targets (or, if not binding, a reference)."""

    op: str
    """``>=`` or ``<=``."""
    value: float
    source: str
    binding: bool = True

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    goal: Goal | None = None


@dataclass(slots=True)
class Row:
    """One configuration measured over several runs; each run yields one value per metric."""

    bench: str
    title: str
    store: str
    settings: dict[str, Any]
    metrics: list[Metric]
    runs: list[dict[str, float]] = field(default_factory=list)
    note: str = ""

    def values(self, key: str) -> list[float]:
        return [run[key] for run in self.runs]

    def median(self, key: str) -> float:
        values = self.values(key)
        return statistics.median(values) if values else math.nan

    def to_json(self) -> dict[str, Any]:
        metrics = []
        for m in self.metrics:
            median = self.median(m.key)
            metrics.append(
                {
                    "key": m.key,
                    "label": m.label,
                    "unit": m.unit,
                    "median": median,
                    "runs": self.values(m.key),
                    "goal": asdict(m.goal) if m.goal else None,
                    "met": m.goal.met(median) if m.goal and self.runs else None,
                }
            )
        return {
            "bench": self.bench,
            "title": self.title,
            "store": self.store,
            "settings": self.settings,
            "note": self.note,
            "metrics": metrics,
            "runs": self.runs,
        }


@dataclass(slots=True)
class Case:
    """A row and how to take one measurement of it (on a fresh database)."""

    row: Row
    measure: Callable[[], Awaitable[dict[str, float]]]
    runs: int


def rows_from_json(data: dict[str, Any]) -> list[Row]:
    """The rows of a results file (for ``--markdown-from``)."""
    rows = []
    for item in data["rows"]:
        metrics = [
            Metric(m["key"], m["label"], m["unit"], Goal(**m["goal"]) if m["goal"] else None)
            for m in item["metrics"]
        ]
        rows.append(
            Row(
                bench=item["bench"],
                title=item["title"],
                store=item["store"],
                settings=item["settings"],
                metrics=metrics,
                runs=item["runs"],
                note=item["note"],
            )
        )
    return rows


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of the
    samples at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "jobs/s":
        return f"{value:,.0f}"
    if unit in ("ms", "s"):
        return f"{value:.2f}"
    if unit in ("MiB", "%"):
        return f"{value:.1f}"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit in ("stmts", "xacts"):
        return f"{value:.1f}"
    return f"{value:g}"


def goal_text(goal: Goal, unit: str) -> str:
    return f"{'target' if goal.binding else 'ref'} {goal.op} {fmt(goal.value, unit)} {unit}"


# -- machine ------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    now = dt.datetime.now().astimezone()
    return {
        "date": now.isoformat(timespec="seconds"),
        "date_text": now.strftime("%a %d %b %Y %H:%M:%S %Z"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "conveyor": f"{metadata.version('conveyor')} ({_git_revision()})",
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "no git"
    return f"git {rev}{' + uncommitted changes in src/' if dirty else ''}"


# -- printing -----------------------------------------------------------------------------
def header(machine: dict[str, Any], stores: list[dict[str, str]], opts: Options) -> str:
    lines = [
        f"Conveyor benchmarks, {machine['date_text']}",
        f"  machine   {machine['cpu_model']}, {machine['cpu_count']} CPUs "
        f"({machine['cpus_usable']} usable), {machine['memory_gb']} GB, {machine['platform']}",
        f"  software  {machine['python']}, SQLite {machine['sqlite']}, "
        f"conveyor {machine['conveyor']}",
        f"  load avg  {', '.join(map(str, machine['load_average']))} at start",
        f"  command   {machine['command']}",
    ]
    for store in stores:
        extra = ", ".join(f"{k} {v}" for k, v in store.items() if k != "store")
        lines.append(f"  store     {store['store']}: {extra}; a fresh database per run")
    gap = opts.latency_gap_ms
    concurrency = (
        "/".join(map(str, opts.concurrency))
        if opts.concurrency
        else "per store (SQLite 100/10, PostgreSQL 100/500)"
    )
    lines += [
        f"  settings  enqueue {opts.enqueue_jobs:,} jobs in batches of {opts.enqueue_batch:,},"
        f" {opts.runs} runs; throughput {opts.throughput_jobs:,} no-op jobs, concurrency "
        f"{concurrency}, {opts.runs} runs;",
        f"            latency {opts.latency_samples} samples (+{opts.latency_warmup} warm-up)"
        f" per run, gap {gap[0]:g}-{gap[1]:g} ms (SQLite across processes "
        f"{opts.cross_gap_ms[0]:g}-{opts.cross_gap_ms[1]:g} ms), {opts.latency_runs} runs;",
        f"            backlog {opts.backlog_measured:,} completions with {opts.backlog_jobs:,} "
        f"queued vs {opts.backlog_base:,} queued, {opts.backlog_pairs} pairs per run, "
        f"{opts.backlog_runs} runs;",
        f"            idle worker: RSS after {opts.idle_seconds:g} s (PostgreSQL: statements "
        f"counted in those {opts.idle_seconds:g} s after {opts.idle_settle_seconds:g} s to "
        f"settle), {opts.rss_runs} runs",
        "  figures   median of the runs (all runs listed); each run on a fresh database",
    ]
    return "\n".join(lines)


def render(rows: list[Row]) -> str:
    out: list[str] = []
    bench = None
    for row in rows:
        if not row.runs:
            continue
        if row.bench != bench:
            bench = row.bench
            out.append(f"\n== {bench} ==")
        settings = ", ".join(f"{k}={v}" for k, v in row.settings.items())
        out.append(f"{row.title}  [{row.store}; {settings}]")
        if row.note:
            out.append(f"    ({row.note})")
        for m in row.metrics:
            median = row.median(m.key)
            runs = "  ".join(fmt(v, m.unit) for v in row.values(m.key))
            line = f"    {m.label:<34} {fmt(median, m.unit):>9} {m.unit:<7} runs: {runs}"
            if m.goal is not None:
                verdict = "MET" if m.goal.met(median) else "MISSED"
                line += f"   {goal_text(m.goal, m.unit)}: {verdict}"
            out.append(line)
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    """The results as one Markdown table (docs/benchmarks.md)."""
    out = [
        "| benchmark | store | settings | figure | median | runs | target |",
        "|---|---|---|---|--:|---|---|",
    ]
    for row in rows:
        if not row.runs:
            continue
        settings = ", ".join(f"{k}={v}" for k, v in row.settings.items())
        for m in row.metrics:
            median = row.median(m.key)
            runs = ", ".join(fmt(v, m.unit) for v in row.values(m.key))
            goal = ""
            if m.goal is not None:
                verdict = "met" if m.goal.met(median) else "**missed**"
                goal = f"{goal_text(m.goal, m.unit)}: {verdict}"
            out.append(
                f"| {row.bench}: {row.title} | {row.store} | {settings} | {m.label} "
                f"| {fmt(median, m.unit)} {m.unit} | {runs} | {goal} |"
            )
    return "\n".join(out).replace(">=", "≥").replace("<=", "≤")


def summary(rows: list[Row]) -> str:
    lines = ["\n== targets (DESIGN.md) =="]
    for row in rows:
        for m in row.metrics:
            if m.goal is None or not m.goal.binding or not row.runs:
                continue
            median = row.median(m.key)
            verdict = "MET" if m.goal.met(median) else "MISSED"
            lines.append(
                f"  {verdict:<6} {row.bench}: {row.title}, {m.label}: {fmt(median, m.unit)} "
                f"{m.unit} ({goal_text(m.goal, m.unit)}) [{row.store}]"
            )
    return "\n".join(lines) if len(lines) > 1 else ""


def write_json(
    machine: dict[str, Any],
    stores: list[dict[str, str]],
    opts: Options,
    rows: list[Row],
    finished: dt.datetime,
    folder: Path = RESULTS_DIR,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-{finished.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "machine": machine,
        "stores": stores,
        "options": asdict(opts),
        "finished": finished.isoformat(timespec="seconds"),
        "rows": [row.to_json() for row in rows if row.runs],
    }
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return path
