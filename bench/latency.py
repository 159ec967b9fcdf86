"""Latency: enqueue → handler start, on an idle worker.

One job at a time: pause a random gap (so the worker is idle, its previous job settled),
enqueue, wait until the handler has started, repeat. The first samples are a warm-up and
are dropped.

- same process: the worker runs as a task beside the enqueuer and shares its store, as in
  ``conveyor serve``; the sample is ``time.perf_counter()`` at handler start minus
  ``time.perf_counter()`` just before ``await client.enqueue(...)``. The enqueue call alone
  (it returns once the job is committed) is reported beside it.
- across processes: the worker is a ``conveyor worker`` subprocess (PostgreSQL: woken by
  ``LISTEN/NOTIFY``, the production shape, and the row its targets apply to; SQLite:
  informational, the worker polls ``PRAGMA data_version`` every ``sqlite_poll_interval``).
  The handler sends ``time.time()`` taken at its start in a UDP datagram to the bench,
  and the sample is that minus ``time.time()`` just before the enqueue. The bench waits
  for the datagram, so it puts no load on the database while a sample is taken.

On PostgreSQL an idle worker is handed each job by the enqueue itself (its offered slots):
one durable commit, then the notice. The two floor rows run that path on bare asyncpg —
the store's own ``insert_job`` against an offer made the way a worker makes it — so what
a Conveyor row shows above its floor is Conveyor's own cost.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from bench import kinds, pg_floor_worker
from bench.common import running_worker, wait_for_worker
from bench.report import Case, Goal, Metric, Options, Row, percentile
from bench.stores import REPO_ROOT, BenchError, StoreConfig
from conveyor import Client, Worker, WorkerConfig
from conveyor.store import postgres
from conveyor.store.postgres.enqueue import _SQL as PG_ENQUEUE

SQLITE_P50 = Goal("<=", 10.0, "DESIGN.md: enqueue -> start on an idle worker p50 <= 10 ms (SQLite)")
PG_P50 = Goal("<=", 2.0, "DESIGN.md: PostgreSQL enqueue -> start on an idle worker p50 <= 2 ms")
PG_P99 = Goal("<=", 6.0, "DESIGN.md: PostgreSQL enqueue -> start on an idle worker p99 <= 6 ms")
START_TIMEOUT_S = 10.0


def _goals(store: StoreConfig, cross: bool) -> tuple[Goal | None, Goal | None]:
    """(p50, p99) targets of a row. SQLite's apply to the same-process worker (as in
    ``conveyor serve``); PostgreSQL's to the worker subprocess woken by NOTIFY (the
    production shape), with the same figures as a reference for the same-process row."""
    if not store.default:
        return None, None
    if store.kind == "sqlite":
        return (None, None) if cross else (SQLITE_P50, None)
    if store.kind == "postgresql":
        if cross:
            return PG_P50, PG_P99
        return _reference(PG_P50), _reference(PG_P99)
    return None, None


def _reference(goal: Goal) -> Goal:
    return Goal(goal.op, goal.value, goal.source + " (binding on the subprocess row)", False)


class _Datagrams(asyncio.DatagramProtocol):
    """Handler start times sent by worker subprocesses: sample number -> wall time."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[float]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        n, wall = data.decode().split()
        waiter = self.waiting.pop(int(n), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(float(wall))


def _summary(samples_s: list[float], enqueue_s: list[float] | None = None) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    result = {
        "p50": percentile(ms, 0.50),
        "p95": percentile(ms, 0.95),
        "p99": percentile(ms, 0.99),
        "max": max(ms),
        "samples": float(len(ms)),
    }
    if enqueue_s:
        result["enqueue_p50"] = percentile([s * 1000 for s in enqueue_s], 0.50)
    return result


async def same_process(
    store: StoreConfig, url: str, samples: int, warmup: int, gap: Callable[[], float]
) -> dict[str, float]:
    settings = store.settings(url)
    client = await Client.connect(settings)
    latencies: list[float] = []
    enqueue_calls: list[float] = []
    async with client:
        config = WorkerConfig.from_settings(settings, [kinds.LATENCY_QUEUE], 10)
        worker = Worker(client.store, config)
        task = asyncio.create_task(worker.run())
        loop = asyncio.get_running_loop()
        try:
            if not await wait_for_worker(client, lambda: not task.done()):
                await task  # raises what stopped it
                raise BenchError("the worker task stopped before it registered")
            for n in range(warmup + samples):
                await asyncio.sleep(gap())
                started = kinds.started[n] = loop.create_future()
                t0 = time.perf_counter()
                await client.enqueue(kinds.LATENCY, {"n": n})
                t1 = time.perf_counter()
                t_start = await asyncio.wait_for(started, START_TIMEOUT_S)
                if n >= warmup:
                    latencies.append(t_start - t0)
                    enqueue_calls.append(t1 - t0)
        finally:
            kinds.started.clear()
            worker.stop()
            await task
    return _summary(latencies, enqueue_calls)


async def cross_process(
    store: StoreConfig,
    url: str,
    samples: int,
    warmup: int,
    gap: Callable[[], float],
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=("127.0.0.1", 0)
    )
    port = int(transport.get_extra_info("sockname")[1])
    client = await Client.connect(store.settings(url))
    latencies: list[float] = []
    try:
        async with client, running_worker(store, url, client, kinds.LATENCY_QUEUE, env=env):
            for n in range(warmup + samples):
                await asyncio.sleep(gap())
                started = protocol.waiting[n] = loop.create_future()
                t0 = time.time()
                await client.enqueue(kinds.LATENCY, {"n": n, "port": port})
                try:
                    t_start = await asyncio.wait_for(started, START_TIMEOUT_S)
                except TimeoutError:
                    raise BenchError(
                        f"sample {n}: the handler did not start within {START_TIMEOUT_S} s"
                    ) from None
                if n >= warmup:
                    latencies.append(t_start - t0)
    finally:
        transport.close()
    return _summary(latencies)


def fsync_probe(folder: str, samples: int = 200) -> dict[str, float]:
    """fsync of a 4 KiB append to a new file in ``folder``, ``samples`` times 2 ms apart:
    what one durable commit costs at least on this disk right now."""
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=folder) as tmp:
        fd = os.open(os.path.join(tmp, "probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for _ in range(samples):
                os.write(fd, b"x" * 4096)
                t0 = time.perf_counter()
                os.fsync(fd)
                times.append(time.perf_counter() - t0)
                time.sleep(0.002)
        finally:
            os.close(fd)
    ms = [t * 1000 for t in times]
    return {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99)}


def _insert_args(n: int) -> tuple[Any, ...]:
    """The store's insert_job parameters for latency sample ``n`` (payload ``{"n": n}``)."""
    return PG_ENQUEUE["insert_job"].args(
        {
            "tenant_id": "default",
            "queue": kinds.LATENCY_QUEUE,
            "kind": kinds.LATENCY,
            "priority": 5,
            "payload": f'{{"n": {n}}}',
            "max_attempts": 1,
            "run_at": None,
            "delay_s": 0.0,
            "timeout_s": None,
            "unique_key": None,
            "meta": "{}",
            "channel": postgres.CHANNEL,
        }
    )


async def postgres_floor(
    store: StoreConfig, url: str, samples: int, warmup: int, gap: Callable[[], float]
) -> dict[str, float]:
    """The handoff path with no Conveyor code around it: a bare asyncpg connection
    listening holds a key and offers slots (as ``bench.pg_floor_worker`` does), another
    runs the store's own ``insert_job`` statement; the sample ends when the handoff notice
    arrives. What is left above this in the rows beside it is Conveyor's own cost."""
    client = await Client.connect(store.settings(url))  # migrates the fresh database
    await client.close()
    insert = PG_ENQUEUE["insert_job"]
    session = {"plan_cache_mode": "force_generic_plan", "jit": "off"}
    producer, listener = [await asyncpg.connect(url, server_settings=session) for _ in range(2)]
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(postgres.CHANNEL, lambda *args: heard.put_nowait(str(args[3])))
    await pg_floor_worker.offer(listener, "floor")
    latencies: list[float] = []
    try:
        for n in range(warmup + samples):
            await asyncio.sleep(gap())
            args = _insert_args(n)
            t0 = time.perf_counter()
            await producer.fetch(insert.sql, *args)
            payload = await asyncio.wait_for(heard.get(), START_TIMEOUT_S)
            if n >= warmup:
                latencies.append(time.perf_counter() - t0)
            if pg_floor_worker.handed_sample(payload) != n:
                raise BenchError(f"sample {n}: the notice handed over another job")
    finally:
        for conn in (producer, listener):
            await conn.close()
    return _summary(latencies)


async def postgres_floor_cross(
    store: StoreConfig, url: str, samples: int, warmup: int, gap: Callable[[], float]
) -> dict[str, float]:
    """The floor across processes: the insert on a bare asyncpg connection here, the
    offer and the listener in a bare-asyncpg subprocess (``bench.pg_floor_worker``) that
    sends the wall time at which the handoff notice arrived. The same process wake-ups as
    the worker subprocess row, none of Conveyor's code."""
    client = await Client.connect(store.settings(url))  # migrates the fresh database
    await client.close()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=("127.0.0.1", 0)
    )
    port = int(transport.get_extra_info("sockname")[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.pg_floor_worker", url, str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    producer = await asyncpg.connect(
        url, server_settings={"plan_cache_mode": "force_generic_plan", "jit": "off"}
    )
    insert = PG_ENQUEUE["insert_job"]
    latencies: list[float] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if line.strip() != b"ready":
            raise BenchError(f"bench.pg_floor_worker did not start: {line!r}")
        for n in range(warmup + samples):
            await asyncio.sleep(gap())
            started = protocol.waiting[n] = loop.create_future()
            args = _insert_args(n)
            t0 = time.time()
            await producer.fetch(insert.sql, *args)
            t_heard = await asyncio.wait_for(started, START_TIMEOUT_S)
            if n >= warmup:
                latencies.append(t_heard - t0)
    finally:
        transport.close()
        await producer.close()
        proc.terminate()
        await proc.wait()
    return _summary(latencies)


def _metrics(goals: tuple[Goal | None, Goal | None], with_enqueue: bool) -> list[Metric]:
    metrics = [
        Metric("p50", "p50", "ms", goals[0]),
        Metric("p95", "p95", "ms"),
        Metric("p99", "p99", "ms", goals[1]),
        Metric("max", "max", "ms"),
    ]
    if with_enqueue:
        metrics.append(Metric("enqueue_p50", "p50 of the enqueue call alone", "ms"))
    return metrics


Sampler = Callable[
    [StoreConfig, str, int, int, Callable[[], float]], Coroutine[Any, Any, dict[str, float]]
]


def _floor_case(
    store: StoreConfig,
    opts: Options,
    settings: dict[str, Any],
    measure: Sampler,
    seed: int,
    title: str,
    note: str,
) -> Case:
    """A floor row: ``measure`` on a fresh database, with the latency rows' gaps."""
    row = Row(
        bench="latency",
        title=title,
        store=store.label,
        settings=settings,
        metrics=_metrics((None, None), with_enqueue=False),
        note=note,
    )
    rng = random.Random(seed)
    low, high = (g / 1000 for g in opts.latency_gap_ms)

    async def run() -> dict[str, float]:
        async with store.fresh_database() as url:
            return await measure(
                store, url, opts.latency_samples, opts.latency_warmup,
                lambda: rng.uniform(low, high),
            )  # fmt: skip

    return Case(row, run, opts.latency_runs)


def cases(stores: list[StoreConfig], opts: Options) -> list[Case]:
    out: list[Case] = []
    settings = {
        "samples": opts.latency_samples,
        "warmup": opts.latency_warmup,
        "gap_ms": f"{opts.latency_gap_ms[0]:g}-{opts.latency_gap_ms[1]:g}",
    }
    low, high = (g / 1000 for g in opts.latency_gap_ms)
    folders = sorted({s.backend.local_folder for s in stores if s.backend.local_folder})
    for folder in folders:
        disk = Row(
            bench="latency",
            title="context: fsync of a 4 KiB append in the database folder",
            store=folder,
            settings={"samples": 200},
            metrics=[Metric("p50", "p50", "ms"), Metric("p99", "p99", "ms")],
            note="taken beside each latency run: a durable commit costs at least this",
        )

        async def probe(f: str = folder) -> dict[str, float]:
            return await asyncio.to_thread(fsync_probe, f)

        out.append(Case(disk, probe, opts.latency_runs))
    for index, store in enumerate(stores):
        rng = random.Random(opts.seed + index)
        row = Row(
            bench="latency",
            title="enqueue -> handler start, worker task in the same process",
            store=store.label,
            settings=settings,
            metrics=_metrics(_goals(store, cross=False), with_enqueue=True),
        )

        async def run_same(s: StoreConfig = store, r: random.Random = rng) -> dict[str, float]:
            async with s.fresh_database() as url:
                return await same_process(
                    s,
                    url,
                    opts.latency_samples,
                    opts.latency_warmup,
                    lambda: r.uniform(low, high),
                )

        out.append(Case(row, run_same, opts.latency_runs))
        if not store.default:
            continue
        if store.kind == "postgresql":
            out.append(
                _floor_case(
                    store, opts, settings, postgres_floor, opts.seed + 2000 + index,
                    "context: bare asyncpg, the same statements (the floor)",
                    "insert_job hands the job to a slot offered by another connection, "
                    "until its notice arrives there; no Conveyor code",
                )
            )  # fmt: skip
        polls = store.backend.polls_across_processes
        gap = opts.cross_gap_ms if polls else opts.latency_gap_ms
        cross = Row(
            bench="latency",
            title="enqueue -> handler start, conveyor worker subprocess"
            + (" (informational)" if polls else ""),
            store=store.label,
            settings={**settings, "gap_ms": f"{gap[0]:g}-{gap[1]:g}"},
            metrics=_metrics(_goals(store, cross=True), with_enqueue=False),
            note=(
                "the worker hears of other processes' commits by polling every "
                "CONVEYOR_SQLITE_POLL_INTERVAL (default 50 ms)"
                if polls
                else "the worker is woken by LISTEN/NOTIFY"
            ),
        )
        cross_rng = random.Random(opts.seed + 1000 + index)
        cross_low, cross_high = (g / 1000 for g in gap)

        async def run_cross(
            s: StoreConfig = store,
            r: random.Random = cross_rng,
            lo: float = cross_low,
            hi: float = cross_high,
        ) -> dict[str, float]:
            async with s.fresh_database() as url:
                return await cross_process(
                    s, url, opts.latency_samples, opts.latency_warmup, lambda: r.uniform(lo, hi)
                )

        out.append(Case(cross, run_cross, opts.latency_runs))
        if store.kind == "postgresql":
            claimed = Row(
                bench="latency",
                title="enqueue -> handler start, conveyor worker subprocess, every job claimed",
                store=store.label,
                settings={**settings, "CONVEYOR_HANDOFF": "false"},
                metrics=_metrics((None, None), with_enqueue=False),
                note="informational: without handoff the woken worker claims the job, a "
                "second commit on the path",
            )
            claimed_rng = random.Random(opts.seed + 4000 + index)

            async def run_claimed(
                s: StoreConfig = store, r: random.Random = claimed_rng
            ) -> dict[str, float]:
                async with s.fresh_database() as url:
                    return await cross_process(
                        s, url, opts.latency_samples, opts.latency_warmup,
                        lambda: r.uniform(low, high), env={"CONVEYOR_HANDOFF": "false"},
                    )  # fmt: skip

            out.append(Case(claimed, run_claimed, opts.latency_runs))
            out.append(
                _floor_case(
                    store, opts, settings, postgres_floor_cross, opts.seed + 3000 + index,
                    "context: bare asyncpg across processes (the floor of the row above)",
                    "insert_job here; the offer and LISTEN in a bare-asyncpg subprocess "
                    "(bench.pg_floor_worker), until the handoff notice arrives; no Conveyor code",
                )
            )  # fmt: skip
    return out
