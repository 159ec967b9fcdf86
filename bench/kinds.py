"""The job kinds the benchmarks run. Worker subprocesses load them with
``--import bench.kinds`` (the repository root is put on their ``PYTHONPATH``)."""

from __future__ import annotations

import asyncio
import socket
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

_udp: socket.socket | None = None


@conveyor.job(NOOP, queue=NOOP_QUEUE)
async def noop(ctx: conveyor.JobContext, payload: JSON) -> None:
    """Does nothing: what is measured is the queue's own cost per job."""


@conveyor.job(LATENCY, queue=LATENCY_QUEUE)
async def latency(ctx: conveyor.JobContext, payload: JSON) -> dict[str, float]:
    """Note when the handler started: ``perf_counter`` for a waiter in this process; for a
    benchmark in another process, wall time in a UDP datagram to the port in the payload
    (no polling of the database that would load it while it is measured) and in the
    result."""
    global _udp
    perf = time.perf_counter()
    wall = time.time()
    n = int(payload["n"])
    waiter = started.pop(n, None)
    if waiter is not None and not waiter.done():
        waiter.set_result(perf)
    port = payload.get("port")
    if port is not None:
        if _udp is None:
            _udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _udp.sendto(f"{n} {wall!r}".encode(), ("127.0.0.1", int(port)))
    return {"started_at": wall}
