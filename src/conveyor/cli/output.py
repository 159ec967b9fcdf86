"""How the CLI prints: JSON for programs (``--json``), aligned text for people."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from conveyor.store.records import Job, QueueStats


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        # Stored before the limits refused such times; the listing must still print.
        return f"{timestamp!r} (out of range)"
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def jobs_table(jobs: Sequence[Job]) -> str:
    rows = [
        [
            str(j.id),
            j.kind,
            j.queue,
            str(j.priority),
            j.state.value,
            f"{j.attempt}/{j.max_attempts}",
            when(j.created_at),
        ]
        for j in jobs
    ]
    return table(["ID", "KIND", "QUEUE", "PRI", "STATE", "ATTEMPT", "CREATED"], rows)


def job_details(job: Job) -> str:
    payload = orjson.dumps(job.payload).decode()
    result = orjson.dumps(job.result).decode() if job.result is not None else "-"
    progress = "-"
    if job.progress is not None:
        progress = f"{job.progress:.0%}" + (
            f" {job.progress_message}" if job.progress_message else ""
        )
    lines = [
        f"job {job.id}  {job.kind}  [{job.state.value}]",
        f"  queue       {job.queue} (priority {job.priority})",
        f"  tenant      {job.tenant_id}",
        f"  attempt     {job.attempt} of {job.max_attempts}",
        f"  timeout     {seconds(job.timeout_s) if job.timeout_s else 'none'}",
        f"  unique key  {job.unique_key or '-'}",
        f"  payload     {payload}",
        f"  result      {result}",
        f"  progress    {progress}",
        f"  created     {when(job.created_at)}",
        f"  run at      {when(job.run_at)}",
        f"  started     {when(job.started_at)}",
        f"  finished    {when(job.finished_at)}",
        f"  worker      {job.locked_by or '-'}",
    ]
    if job.cancel_requested and job.state.value == "running":
        lines.append("  cancel      requested")
    if job.errors:
        lines.append(f"  errors      {len(job.errors)}")
        for error in job.errors:
            lines.append(
                f"    attempt {error.attempt} at {when(error.at)}: {error.type}: {error.message}"
            )
    return "\n".join(lines)


def queues_table(stats: Sequence[QueueStats]) -> str:
    rows = [
        [
            s.name + (" (paused)" if s.paused else ""),
            str(s.counts["queued"] - s.scheduled),
            str(s.scheduled),
            f"{s.running}/{s.limit if s.limit is not None else '-'}",
            str(s.counts["completed"]),
            str(s.counts["failed"]),
            str(s.counts["cancelled"]),
            seconds(s.oldest_queued_age_s),
            f"{s.completed_last_minute}/{s.failed_last_minute}",
            seconds(s.run_time_p50_s),
            seconds(s.run_time_p95_s),
        ]
        for s in stats
    ]
    headers = [
        "QUEUE",
        "DUE",
        "SCHEDULED",
        "RUNNING/LIMIT",
        # Finished jobs are counted over the last hour (FINISHED_WINDOW_S), not since ever.
        "COMPLETED 1H",
        "FAILED 1H",
        "CANCELLED 1H",
        "OLDEST",
        "DONE/FAILED 1M",
        "P50",
        "P95",
    ]
    return table(headers, rows)
