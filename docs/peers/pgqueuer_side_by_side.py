"""Side by side on one PostgreSQL server: pgqueuer and Conveyor, each at its defaults.

Not part of the bench suite and not run by `make bench`: pgqueuer is a peer, installed in a
virtualenv of its own, never in the project's venv or lock (docs/benchmarks.md)::

    python3 -m venv /tmp/pgq-venv && /tmp/pgq-venv/bin/pip install pgqueuer==1.6.0 asyncpg
    /tmp/pgq-venv/bin/python docs/peers/pgqueuer_side_by_side.py [--jobs N] [--rounds R]

Run from the repository root after `make install`. Every figure is no-op jobs on a fresh
database (conveyor_bench_peer_<random>, dropped after), measured in interleaved order in one
run, each worker in a process of its own:

- throughput, one worker: N jobs bulk-enqueued (not timed), ANALYZE, then one worker that
  exits when the queue is empty (pgqueuer: ``QueueManager.run(mode=drain)``; Conveyor:
  ``conveyor worker --burst``). The rate is first pick/claim to last completion, from each
  one's own tables.
- throughput, two workers: the same with two worker processes started together.
- single enqueue: M jobs enqueued one after another, one call each, in one process
  (pgqueuer: ``Queries.enqueue``; Conveyor: ``Client.enqueue``); beside them the floor of
  that path: the bare INSERT of one row into ``conveyor_jobs`` (with its NOTIFY in the same
  statement, as Conveyor sends one) on one asyncpg connection in autocommit.
- backlog: one worker drains 10,000 queued jobs, and B queued jobs (200,000 by default);
  the ratios of the B run's rates (over its first 10,000 completions, and over the whole
  drain) to the 10,000 run's are what a large backlog costs.

"Defaults" means what a user gets: no setting changed but the queue to serve and the
database URL (Conveyor's logs at their default level and format, written to a file). A
tuned Conveyor row (``--concurrency 100``, ``CONVEYOR_LOG_LEVEL=WARNING``) is printed
beside, for the record. Figures are medians over the rounds; ratios are of medians.
"""

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

ADMIN = os.environ.get("PEER_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = os.getcwd()  # run from the repository root
CONVEYOR = f"{REPO}/.venv/bin/conveyor"
CONVEYOR_PY = f"{REPO}/.venv/bin/python"
FIRST = 10_000  # completions the backlog rate is measured over

PGQ_WORKER = """
import asyncio, asyncpg, sys
from datetime import timedelta
from pgqueuer.db import AsyncpgDriver
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    @qm.entrypoint('noop')
    async def noop(job):
        pass
    # dequeue_timeout only bounds the wait once the queue is empty (drain mode exits then).
    await qm.run(mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=0.2))
asyncio.run(main())
"""

CONVEYOR_FILL = """
import asyncio, sys
from bench import kinds
from conveyor import Client, Settings
async def main():
    n = int(sys.argv[2])
    async with await Client.connect(Settings(database_url=sys.argv[1])) as client:
        for start in range(0, n, 10000):
            k = min(10000, n - start)
            await client.enqueue_many(client.prepare(kinds.NOOP) for _ in range(k))
asyncio.run(main())
"""

CONVEYOR_SINGLES = """
import asyncio, sys, time
from bench import kinds
from conveyor import Client, Settings
async def main():
    n = int(sys.argv[2])
    async with await Client.connect(Settings(database_url=sys.argv[1])) as client:
        for _ in range(50):
            await client.enqueue(kinds.NOOP)
        t0 = time.perf_counter()
        for _ in range(n):
            await client.enqueue(kinds.NOOP)
        print(n / (time.perf_counter() - t0))
asyncio.run(main())
"""

PGQ_SINGLES = """
import asyncio, asyncpg, sys, time
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries
async def main():
    n = int(sys.argv[2])
    q = Queries(AsyncpgDriver(await asyncpg.connect(sys.argv[1])))
    for _ in range(50):
        await q.enqueue('noop', None, 0)
    t0 = time.perf_counter()
    for _ in range(n):
        await q.enqueue('noop', None, 0)
    print(n / (time.perf_counter() - t0))
asyncio.run(main())
"""

FLOOR_SQL = (
    "WITH ins AS (INSERT INTO conveyor_jobs (tenant_id, queue, kind, priority, payload,"
    " max_attempts, timeout_s) VALUES ('default', 'bench', 'bench.noop', 3, '{}', 3, 300)"
    " RETURNING id, queue) SELECT id, pg_notify('conveyor_floor', 'q:' || queue) FROM ins"
)


async def fresh_db() -> tuple[str, str]:
    name = f"conveyor_bench_peer_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return name, ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def drop_db(name: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def conveyor_env(url: str, tuned: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_DATABASE_URL=url, PYTHONPATH=REPO)
    if tuned:
        env["CONVEYOR_LOG_LEVEL"] = "WARNING"
    return env


def worker_cmd(tuned: bool) -> list[str]:
    cmd = [CONVEYOR, "worker", "--import", "bench.kinds", "--queues", "bench", "--burst"]
    return [*cmd, "--concurrency", "100"] if tuned else cmd


# -- filling and draining -------------------------------------------------------------------
async def pgq_fill(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    q = Queries(AsyncpgDriver(conn))
    await q.install()
    for start in range(0, n, 10_000):
        k = min(10_000, n - start)
        await q.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.execute("ANALYZE")
    await conn.close()


async def conveyor_fill(url: str, n: int) -> None:
    env = conveyor_env(url, tuned=False)
    subprocess.run([CONVEYOR_PY, "-c", CONVEYOR_FILL, url, str(n)], env=env, check=True)
    conn = await asyncpg.connect(url)
    await conn.execute("ANALYZE")
    await conn.close()


async def run_workers(cmds: list[list[str]], env: dict[str, str] | None) -> None:
    """Start the worker processes together and wait for them to drain the queue and exit."""
    with tempfile.TemporaryFile() as logs:
        procs = [subprocess.Popen(c, env=env, stdout=logs, stderr=logs) for c in cmds]
        try:
            while any(p.poll() is None for p in procs):
                await asyncio.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=60)
        bad = [p.returncode for p in procs if p.returncode != 0]
        if bad:
            logs.seek(0)
            raise RuntimeError(f"worker exited with {bad}: {logs.read()[-2000:]!r}")


PGQ_SPAN = (
    "SELECT extract(epoch FROM (SELECT max(created) FROM (SELECT created FROM pgqueuer_log"
    " WHERE status = 'successful' ORDER BY created LIMIT $1) s)"
    " - (SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'))::float8"
)
CONVEYOR_SPAN = (
    "SELECT extract(epoch FROM (SELECT max(finished_at) FROM (SELECT finished_at"
    " FROM conveyor_jobs WHERE state = 'completed' ORDER BY finished_at LIMIT $1) s)"
    " - (SELECT min(started_at) FROM conveyor_jobs))::float8"
)


async def drain_rates(url: str, span_sql: str, n: int, first: int | None) -> dict[str, float]:
    """Jobs/s from the first pick/claim to the last completion of all ``n`` jobs and, with
    ``first``, to the ``first``-th completion (from the same run)."""
    conn = await asyncpg.connect(url)
    try:
        rates = {"all": n / await conn.fetchval(span_sql, n)}
        if first is not None:
            rates["first"] = first / await conn.fetchval(span_sql, first)
        return rates
    finally:
        await conn.close()


async def pgq_drain(url: str, n: int, processes: int, first: int | None) -> dict[str, float]:
    cmd = [sys.executable, "-c", PGQ_WORKER, url]
    await run_workers([cmd] * processes, None)
    conn = await asyncpg.connect(url)
    done = await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    await conn.close()
    if done != n or left:
        raise RuntimeError(f"pgqueuer completed {done} of {n} jobs, {left} left in its queue")
    return await drain_rates(url, PGQ_SPAN, n, first)


async def conveyor_drain(
    url: str, n: int, processes: int, first: int | None, tuned: bool
) -> dict[str, float]:
    await run_workers([worker_cmd(tuned)] * processes, conveyor_env(url, tuned))
    conn = await asyncpg.connect(url)
    done = await conn.fetchval("SELECT count(*) FROM conveyor_jobs WHERE state = 'completed'")
    await conn.close()
    if done != n:
        raise RuntimeError(f"conveyor completed {done} of {n} jobs")
    return await drain_rates(url, CONVEYOR_SPAN, n, first)


# -- the measurements -----------------------------------------------------------------------
async def with_db(fn: Callable[[str], Awaitable[dict[str, float]]]) -> dict[str, float]:
    name, url = await fresh_db()
    try:
        return await fn(url)
    finally:
        await drop_db(name)


def throughput(
    who: str, n: int, processes: int, first: int | None = None
) -> Callable[[], Awaitable[dict[str, float]]]:
    async def one(url: str) -> dict[str, float]:
        if who == "pgqueuer":
            await pgq_fill(url, n)
            return await pgq_drain(url, n, processes, first)
        await conveyor_fill(url, n)
        return await conveyor_drain(url, n, processes, first, tuned=who == "conveyor tuned")

    return lambda: with_db(one)


def singles(who: str, m: int) -> Callable[[], Awaitable[dict[str, float]]]:
    async def one(url: str) -> dict[str, float]:
        if who == "pgqueuer":
            await pgq_fill(url, 0)
            out = subprocess.run(
                [sys.executable, "-c", PGQ_SINGLES, url, str(m)],
                capture_output=True, text=True, check=True,
            )
            return {"all": float(out.stdout.split()[-1])}
        if who == "floor":
            await conveyor_fill(url, 0)
            conn = await asyncpg.connect(url)
            stmt = await conn.prepare(FLOOR_SQL)
            for _ in range(50):
                await stmt.fetchrow()
            t0 = time.perf_counter()
            for _ in range(m):
                await stmt.fetchrow()
            rate = m / (time.perf_counter() - t0)
            await conn.close()
            return {"all": rate}
        out = subprocess.run(
            [CONVEYOR_PY, "-c", CONVEYOR_SINGLES, url, str(m)],
            env=conveyor_env(url, tuned=False), capture_output=True, text=True, check=True,
        )
        return {"all": float(out.stdout.split()[-1])}

    return lambda: with_db(one)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=2_000, help="single enqueues per run")
    parser.add_argument("--backlog", type=int, default=200_000, help="jobs queued, backlog run")
    parser.add_argument(
        "--only", nargs="*", default=["one", "two", "singles", "backlog"],
        choices=["one", "two", "singles", "backlog"],
    )
    args = parser.parse_args()
    n = args.jobs
    configs: list[tuple[str, str, Callable[[], Awaitable[dict[str, float]]]]] = []
    if "one" in args.only:
        for who in ("pgqueuer", "conveyor", "conveyor tuned"):
            configs.append(("one worker, jobs/s", who, throughput(who, n, 1)))
    if "two" in args.only:
        for who in ("pgqueuer", "conveyor", "conveyor tuned"):
            configs.append(("two workers, jobs/s", who, throughput(who, n, 2)))
    if "singles" in args.only:
        for who in ("pgqueuer", "conveyor", "floor"):
            configs.append(("single enqueue, jobs/s", who, singles(who, args.singles)))
    small = f"{FIRST:,} queued"
    big = f"{args.backlog:,} queued"
    if "backlog" in args.only:
        for who in ("pgqueuer", "conveyor"):
            configs.append((small, who, throughput(who, FIRST, 1)))
            configs.append((big, who, throughput(who, args.backlog, 1, FIRST)))
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for what, who, fn in configs:
            rates = await fn()
            labels = {"all": what, "first": f"{what}, first {FIRST:,} completions"}
            if what in (small, big):
                labels["all"] = f"{what}, drained, jobs/s"
                labels["first"] = f"{what}, first {FIRST:,} completions, jobs/s"
            for key, value in rates.items():
                results.setdefault((labels[key], who), []).append(value)
                print(f"round {r + 1}: {labels[key]:42s} {who:15s} {value:10,.0f}", flush=True)
    med = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nmedians of {args.rounds} rounds ({n:,} jobs a throughput run):")
    for (what, who), value in med.items():
        runs = " · ".join(f"{v:,.0f}" for v in results[(what, who)])
        print(f"  {what:42s} {who:15s} {value:10,.0f}   ({runs})")
    print("\nratios (median against median):")
    for what in dict.fromkeys(w for w, _ in med):
        peer = med.get((what, "pgqueuer"))
        for who in ("conveyor", "conveyor tuned", "floor"):
            if peer and (what, who) in med:
                print(f"  {what:42s} {who} / pgqueuer  x{med[(what, who)] / peer:.2f}")
    if "backlog" in args.only:
        base = f"{small}, drained, jobs/s"
        for label in (f"{big}, first {FIRST:,} completions, jobs/s", f"{big}, drained, jobs/s"):
            for who in ("pgqueuer", "conveyor"):
                ratio = med[(label, who)] / med[(base, who)]
                print(f"  backlog ratio {who}: {label} / {base}: {ratio:.3f}")


asyncio.run(main())
