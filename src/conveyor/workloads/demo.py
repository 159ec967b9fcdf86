"""Demo kinds for the README tour and ``make run``: import ``conveyor.workloads.demo``."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

import conveyor
from conveyor.store.records import JSON


class Sleep(BaseModel):
    seconds: float = Field(default=1.0, ge=0, le=3600, description="How long to work.")
    steps: int = Field(default=4, ge=1, le=1000, description="Progress reports along the way.")


class Flaky(BaseModel):
    fail_times: int = Field(default=2, ge=0, description="Attempts that fail before one succeeds.")


@conveyor.job("demo.echo", queue="default", priority=3)
async def echo(ctx: conveyor.JobContext, payload: JSON) -> JSON:
    """Return the payload: the smallest job there is."""
    return payload


@conveyor.job("demo.sleep", queue="default", priority=3, timeout=3600)
async def sleep(ctx: conveyor.JobContext, payload: Sleep) -> dict[str, float]:
    """Work for a while, reporting progress; cancel it to see a running job stop."""
    for step in range(payload.steps):
        await asyncio.sleep(payload.seconds / payload.steps)
        ctx.progress((step + 1) / payload.steps, f"step {step + 1} of {payload.steps}")
    return {"slept_s": payload.seconds}


@conveyor.job(
    "demo.flaky",
    queue="default",
    priority=2,
    max_attempts=5,
    backoff=conveyor.Backoff(base=1.0, cap=10.0),
)
def flaky(ctx: conveyor.JobContext, payload: Flaky) -> dict[str, int]:
    """Fail the first ``fail_times`` attempts, then succeed: watch the retries."""
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"succeeded_on_attempt": ctx.attempt}


@conveyor.job("demo.discard", queue="default", priority=3)
async def discard(ctx: conveyor.JobContext, payload: JSON) -> None:
    """Fail at once with no retry."""
    raise conveyor.Discard("this job always gives up")
