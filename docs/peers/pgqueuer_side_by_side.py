"""Side by side on one PostgreSQL server: pgqueuer and Conveyor draining no-op jobs.

Not part of the bench suite and not run by `make bench`: pgqueuer is a peer, installed in a
virtualenv of its own, never in the project's venv or lock (docs/benchmarks.md)::

    python3 -m venv /tmp/pgq-venv && /tmp/pgq-venv/bin/pip install pgqueuer==1.6.0 asyncpg
    cd /work/main && /tmp/pgq-venv/bin/python docs/peers/pgqueuer_side_by_side.py [N] [ROUNDS]

Each round, in interleaved order: pgqueuer with batch_size 10 (its default) and 100, and
Conveyor with concurrency 100. Each one: a fresh database (conveyor_bench_peer_<random>,
dropped after), N no-op jobs bulk-enqueued in batches of 10,000 (timed after connecting),
ANALYZE, then one worker process that exits when the queue is empty (pgqueuer:
QueueManager.run(mode=drain) in a `python -c` child of this interpreter; Conveyor:
`conveyor worker --burst` from the project's .venv). Reported: first pick/claim to last
completion from each one's own tables, spawn to exit, bulk enqueue; medians and ratios.
"""

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = os.getcwd()  # run from the repository root


async def fresh_db() -> tuple[str, str]:
    name = f"conveyor_bench_peer_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


async def drop_db(name: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def pgqueuer_round(n: int, batch: int) -> dict[str, float]:
    name, url = await fresh_db()
    try:
        conn = await asyncpg.connect(url)
        q = Queries(AsyncpgDriver(conn))
        await q.install()
        t0 = time.perf_counter()
        for start in range(0, n, 10_000):
            k = min(10_000, n - start)
            await q.enqueue(["noop"] * k, [None] * k, [0] * k)
        enqueue_rate = n / (time.perf_counter() - t0)
        await conn.execute("ANALYZE")
        await conn.close()
        # The worker in a process of its own, like conveyor's.
        code = (
            "import asyncio, asyncpg, time, sys\n"
            "from datetime import timedelta\n"
            "from pgqueuer.db import AsyncpgDriver\n"
            "from pgqueuer.qm import QueueManager\n"
            "from pgqueuer.queries import Queries\n"
            "from pgqueuer.types import QueueExecutionMode\n"
            "async def main():\n"
            f"    conn = await asyncpg.connect({url!r})\n"
            "    qm = QueueManager(Queries(AsyncpgDriver(conn)))\n"
            "    @qm.entrypoint('noop')\n"
            "    async def noop(job):\n"
            "        pass\n"
            "    t0 = time.perf_counter()\n"
            f"    await qm.run(batch_size={batch}, mode=QueueExecutionMode.drain,"
            " dequeue_timeout=timedelta(seconds=0.2))\n"
            "    print(time.perf_counter() - t0)\n"
            "asyncio.run(main())\n"
        )
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        spawn_exit = time.perf_counter() - t0
        run_s = float(out.stdout.strip().splitlines()[-1])
        conn = await asyncpg.connect(url)
        statuses = dict(
            await conn.fetch("SELECT status::text, count(*) FROM pgqueuer_log GROUP BY 1")
        )
        span = await conn.fetchval(
            "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
            " - min(created) FILTER (WHERE status = 'picked'))::float8 FROM pgqueuer_log"
        )
        done = statuses.get("successful", 0)
        left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        await conn.close()
        if left:
            raise RuntimeError(f"pgqueuer left {left} jobs")
        if done != n:
            raise RuntimeError(f"pgqueuer logged {statuses}")
        return {
            "span_rate": n / span if span else float("nan"),
            "run_rate": n / run_s,
            "spawn_exit_rate": n / spawn_exit,
            "enqueue_rate": enqueue_rate,
        }
    finally:
        await drop_db(name)


async def conveyor_round(n: int, concurrency: int) -> dict[str, float]:
    name, url = await fresh_db()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_DATABASE_URL=url, CONVEYOR_LOG_LEVEL="WARNING", PYTHONPATH=REPO)
        py = f"{REPO}/.venv/bin/python"
        fill = (
            "import asyncio, time\n"
            "from bench import kinds\n"
            "from conveyor import Client, Settings\n"
            "async def main():\n"
            f"    client = await Client.connect(Settings(database_url={url!r}))\n"
            "    async with client:\n"
            "        t0 = time.perf_counter()\n"
            f"        for start in range(0, {n}, 10000):\n"
            f"            k = min(10000, {n} - start)\n"
            "            await client.enqueue_many(client.prepare(kinds.NOOP) for _ in range(k))\n"
            f"        print({n} / (time.perf_counter() - t0))\n"
            "asyncio.run(main())\n"
        )
        out = subprocess.run([py, "-c", fill], env=env, capture_output=True, text=True, check=True)
        enqueue_rate = float(out.stdout.strip().splitlines()[-1])
        conn = await asyncpg.connect(url)
        await conn.execute("ANALYZE conveyor_jobs")
        t0 = time.perf_counter()
        subprocess.run(
            [
                f"{REPO}/.venv/bin/conveyor",
                "worker",
                "--import",
                "bench.kinds",
                "--queues",
                "bench",
                "--concurrency",
                str(concurrency),
                "--burst",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        spawn_exit = time.perf_counter() - t0
        span = await conn.fetchval(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 "
            "FROM conveyor_jobs WHERE state = 'completed'"
        )
        done = await conn.fetchval("SELECT count(*) FROM conveyor_jobs WHERE state = 'completed'")
        await conn.close()
        if done != n:
            raise RuntimeError(f"conveyor completed {done} of {n}")
        return {
            "span_rate": n / span,
            "run_rate": float("nan"),
            "spawn_exit_rate": n / spawn_exit,
            "enqueue_rate": enqueue_rate,
        }
    finally:
        await drop_db(name)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[dict[str, float]]] = {}
    configs = [
        ("pgqueuer batch_size=10", lambda: pgqueuer_round(n, 10)),
        ("pgqueuer batch_size=100", lambda: pgqueuer_round(n, 100)),
        ("conveyor concurrency=100", lambda: conveyor_round(n, 100)),
    ]
    for r in range(rounds):
        for label, fn in configs:
            res = await fn()
            results.setdefault(label, []).append(res)
            print(
                f"round {r + 1} {label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in res.items()),
                flush=True,
            )
    print()
    keys = ("span_rate", "run_rate", "spawn_exit_rate", "enqueue_rate")
    med = {
        label: {k: statistics.median(x[k] for x in runs) for k in keys}
        for label, runs in results.items()
    }
    for label, m in med.items():
        print(
            f"{label:26s} first pick/claim -> last completion {m['span_rate']:8,.0f} jobs/s;"
            f" spawn->exit {m['spawn_exit_rate']:,.0f}; run() call {m['run_rate']:,.0f};"
            f" bulk enqueue {m['enqueue_rate']:,.0f} jobs/s"
        )
    c = med["conveyor concurrency=100"]
    for label in ("pgqueuer batch_size=10", "pgqueuer batch_size=100"):
        p = med[label]
        print(
            f"conveyor / {label}: span x{c['span_rate'] / p['span_rate']:.2f},"
            f" spawn->exit x{c['spawn_exit_rate'] / p['spawn_exit_rate']:.2f},"
            f" bulk enqueue x{c['enqueue_rate'] / p['enqueue_rate']:.2f}"
        )


asyncio.run(main())
