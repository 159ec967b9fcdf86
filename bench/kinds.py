"""The job kinds the benchmarks run. Worker subprocesses load them with
``--import bench.kinds`` (the repository root is put on their ``PYTHONPATH``)."""

from __future__ import annotations

import asyncio
import time

import conveyor
from conveyor.store.records import JSON

NOOP = "bench.noop"
NOOP_QUEUE = "bench"
LATENCY = "bench.latency"
LATENCY_QUEUE = "bench-latency"

started: dict[int, asyncio.Future[float]] = {}
"""Sample number -> future the in-process latency benchmark awaits; the handler resolves it
with ``time.perf_counter()`` as it starts. Empty in a worker subprocess."""


@conveyor.job(NOOP, queue=NOOP_QUEUE)
async def noop(ctx: conveyor.JobContext, payload: JSON) -> None:
    """Does nothing: what is measured is the queue's own cost per job."""


@conveyor.job(LATENCY, queue=LATENCY_QUEUE)
async def latency(ctx: conveyor.JobContext, payload: JSON) -> dict[str, float]:
    """Note when the handler started: ``perf_counter`` for a waiter in this process, wall
    time in the result for a benchmark in another process."""
    perf = time.perf_counter()
    wall = time.time()
    waiter = started.pop(int(payload["n"]), None)
    if waiter is not None and not waiter.done():
        waiter.set_result(perf)
    return {"started_at": wall}
