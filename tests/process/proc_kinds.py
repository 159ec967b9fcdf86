"""Job kinds for the process tests.

The kinds live in their own :data:`KINDS` registry, so the test process can prepare jobs
with them without adding them to the process-wide registry other suites use. Worker
subprocesses import :mod:`proc_worker`, which installs them where workers look.

Handlers talk to the test through files in the folder named by ``PROC_TEST_DIR``:

- ``started-{job id}-{attempt}`` holds the pid of the worker that started that attempt;
- ``ran-{pid}.txt`` gets one line per ``proc.record`` job that process ran;
- ``active`` holds "current peak" jobs of ``proc.overlap`` running at once (across
  processes, under a file lock).

``proc.cron`` is periodic (every five seconds) in queue ``cron``: only workers that serve that
queue schedule it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

from pydantic import BaseModel

import conveyor

KINDS = conveyor.Registry()


def out_dir() -> Path:
    return Path(os.environ["PROC_TEST_DIR"])


def mark_started(ctx: conveyor.JobContext) -> None:
    (out_dir() / f"started-{ctx.id}-{ctx.attempt}").write_text(str(os.getpid()))


class Sleep(BaseModel):
    seconds: float


@conveyor.job("proc.record", registry=KINDS)
async def record(ctx: conveyor.JobContext, payload: object) -> None:
    """Append this job's id to the running process's file."""
    with (out_dir() / f"ran-{os.getpid()}.txt").open("a") as f:
        f.write(f"{ctx.id}\n")


@conveyor.job("proc.record_slow", registry=KINDS)
async def record_slow(ctx: conveyor.JobContext, payload: Sleep) -> None:
    """Sleep, then append this job's id to the running process's file (so a line means
    a handler run that finished)."""
    await asyncio.sleep(payload.seconds)
    with (out_dir() / f"ran-{os.getpid()}.txt").open("a") as f:
        f.write(f"{ctx.id}\n")


@conveyor.job("proc.sleep", registry=KINDS, timeout=120)
async def sleep(ctx: conveyor.JobContext, payload: Sleep) -> dict[str, int]:
    """Say it started, then sleep."""
    mark_started(ctx)
    await asyncio.sleep(payload.seconds)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@conveyor.job("proc.stuck_first", registry=KINDS, timeout=120)
async def stuck_first(ctx: conveyor.JobContext, payload: object) -> dict[str, int]:
    """Hang on the first attempt (until the worker dies); finish at once after that."""
    mark_started(ctx)
    if ctx.attempt == 1:
        await asyncio.sleep(120)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def _bump_active(delta: int) -> None:
    with (out_dir() / "active").open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        fields = f.read().split()
        current, peak = (int(fields[0]), int(fields[1])) if fields else (0, 0)
        current += delta
        peak = max(peak, current)
        f.seek(0)
        f.truncate()
        f.write(f"{current} {peak}")


@conveyor.job("proc.overlap", queue="q", registry=KINDS)
async def overlap(ctx: conveyor.JobContext, payload: Sleep) -> None:
    """Count itself in the cross-process counter of running jobs while it sleeps."""
    _bump_active(+1)
    try:
        await asyncio.sleep(payload.seconds)
    finally:
        _bump_active(-1)


@conveyor.periodic("* * * * * */5", "proc.cron", queue="cron", registry=KINDS)
async def cron(ctx: conveyor.JobContext, payload: object) -> dict[str, object]:
    """Say which process ran which tick."""
    return {"pid": os.getpid(), "tick": ctx.job.meta.get("periodic_tick")}


@conveyor.job("proc.sync_hang", registry=KINDS, timeout=0.5)
def sync_hang(ctx: conveyor.JobContext, payload: object) -> None:
    """A sync handler that ignores its timeout and ctx.cancelled: its thread never
    returns while the process lives."""
    mark_started(ctx)
    threading.Event().wait()
