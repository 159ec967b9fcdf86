"""How the CLI prints: JSON for programs (``--json``), aligned text for people; times in
both as ISO 8601 in UTC with the offset (``2026-12-02T06:44:07.123456+00:00``)."""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.store.records import Job, QueueStats, iso_time

EXIT_BROKEN_PIPE = 141
"""The reader went away (``| head``): what a shell reports for a command SIGPIPE ended."""
EXIT_WRITE_FAILED = 74
"""Writing the output failed otherwise (EX_IOERR of sysexits.h)."""


def emit(text: str) -> None:
    """Write ``text`` and a newline to stdout whole, or exit non-zero.

    Written to the file descriptor in blocking mode: an event loop (uvloop) may leave
    fd 1 non-blocking, and with ``PYTHONUNBUFFERED`` a short write through ``sys.stdout``
    to a slow reader lost the rest of the output, at exit code 0."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):
        # Not a file (the CLI called in-process, its output captured): nothing to cut.
        sys.stdout.write(text + "\n")
        return
    data = (text + "\n").encode()
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        # Nothing more may reach stdout, not even Python's flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        if exc.errno == errno.EPIPE:
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        sys.stderr.write(f"conveyor: error: cannot write the output: {exc.strerror or exc}\n")
        raise SystemExit(EXIT_WRITE_FAILED) from None


def print_json(data: Any) -> None:
    emit(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def when(timestamp: float | None) -> str:
    """A time as everywhere else (:func:`iso_time`); ``-`` for none."""
    return "-" if timestamp is None else iso_time(timestamp)


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


def job_details(job: Job, serving: Sequence[str] | None = None) -> str:
    """A job for people; ``serving``: for a queued job, the live workers that would run it."""
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
    if serving is not None:
        lines.append(
            f"  served by   {', '.join(serving)}"
            if serving
            else f"  served by   no live worker runs kind {job.kind!r} in queue {job.queue!r}; "
            "the job waits until one starts"
        )
    if job.cancel_requested and job.state.value == "running":
        lines.append("  cancel      requested")
    if job.errors:
        lines.append(f"  errors      {len(job.errors)}")
        for error in job.errors:
            lines.append(
                f"    attempt {error.attempt} at {when(error.at)}: {error.type}: {error.message}"
            )
    return "\n".join(lines)


def queues_kinds(stats: Sequence[QueueStats]) -> str:
    """Which kinds each queue's live workers serve (with how many workers), and the queued
    jobs of kinds none of them runs: those wait, they are not failed."""
    lines = ["", "KINDS SERVED (live workers)"]
    for s in stats:
        served = ", ".join(f"{kind} ({len(ids)})" for kind, ids in s.served_kinds.items())
        lines.append(f"  {s.name}: {served or 'no live worker'}")
    unserved = [s for s in stats if s.unserved_kinds]
    if unserved:
        lines.append("UNSERVED (queued jobs no live worker runs; they wait)")
        for s in unserved:
            waiting = ", ".join(f"{kind}: {n} waiting" for kind, n in s.unserved_kinds.items())
            lines.append(f"  {s.name}: {waiting}")
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
