"""``python -m bench.exchange_time [OTHER_SRC] [--rounds N] [--calls N] [--tenants N]
[--slots N]``: one PostgreSQL exchange timed alone, through the store, on this checkout's
code and (given ``OTHER_SRC``, another checkout's ``src``) on another's, alternated round
by round.

Each run makes a fresh database (as the benchmarks do, ``--postgres-url``), queues
``--jobs`` no-op jobs round-robin over ``--tenants`` tenants, claims ``--slots`` (100), then times
``--calls`` exchanges in a row, each settling the previous claim's jobs as completed
and claiming as many more: the worker's steady state at its defaults, without the worker.
A run prints its p10 and median in ms, and the CPU time per exchange of the
PostgreSQL backends (from ``/proc``: the server must run on this machine) and of the
client process, which a busy machine moves less than it moves wall time; the summary
gives each side's per round and the ratio this / other of their medians. Each run is a
subprocess with its code first on ``PYTHONPATH``, as in :mod:`bench.against`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import orjson

from bench.stores import DEFAULT_POSTGRES_URL, REPO_ROOT, PostgresBackend, StoreConfig
from bench.tenants import fill_tenants


async def timed_run(
    admin_url: str, jobs: int, calls: int, tenants: int, slots: int
) -> dict[str, float]:
    """One run in this process: the exchange's p10 and median, in ms."""
    from bench import kinds
    from conveyor.store import make_store
    from conveyor.store.records import ClaimRequest, Outcome, OutcomeKind

    backend = PostgresBackend(admin_url)
    store_config = StoreConfig(backend, "postgresql")
    async with store_config.fresh_database() as url:
        store = make_store(store_config.settings(url))
        await store.open()
        try:
            await store.migrate()
            await fill_tenants(store_config, url, jobs, tenants)
            claim = ClaimRequest("w1", {kinds.NOOP_QUEUE: slots}, 60.0, kinds=(kinds.NOOP,))
            held = (await store.settle_and_claim((), (), "w1", claim)).claimed
            times: list[float] = []
            server_before = await server_cpu_s(admin_url, url)
            client_before = time.process_time()
            for _ in range(calls):
                done = [
                    Outcome(j.id, j.attempt, OutcomeKind.COMPLETED, j.queue, result_json="null")
                    for j in held
                ]
                t0 = time.perf_counter()
                result = await store.settle_and_claim(done, (), "w1", claim)
                times.append((time.perf_counter() - t0) * 1000)
                if len(result.claimed) != slots:
                    raise SystemExit(f"claimed {len(result.claimed)} of {slots}: raise --jobs")
                held = result.claimed
            client_ms = (time.process_time() - client_before) * 1000 / calls
            server_ms = (await server_cpu_s(admin_url, url) - server_before) * 1000 / calls
        finally:
            await store.close()
    times.sort()
    return {
        "p10": times[len(times) // 10],
        "median": statistics.median(times),
        "server_cpu": server_ms,
        "client_cpu": client_ms,
    }


async def server_cpu_s(admin_url: str, url: str) -> float:
    """The CPU seconds (user and system) used so far by the PostgreSQL backends connected
    to ``url``'s database, read from ``/proc``: the server runs on this machine, and CPU
    time moves far less than wall time when other work shares the cores."""
    conn = await asyncpg.connect(admin_url)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.rsplit("/", 1)[-1],
        )
    finally:
        await conn.close()
    return sum(map(process_cpu_s, (row["pid"] for row in pids)))


def process_cpu_s(pid: int) -> float:
    """Process ``pid``'s user and system CPU seconds, 0 if it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_side(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO_ROOT)])}
    cmd = [sys.executable, "-m", "bench.exchange_time", "--child"]
    cmd += ["--postgres-url", args.postgres_url, "--jobs", str(args.jobs)]
    cmd += ["--calls", str(args.calls), "--tenants", str(args.tenants)]
    cmd += ["--slots", str(args.slots)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run failed with {src}:\n{done.stderr[-3000:]}")
    result: dict[str, float] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exchange_time", description=__doc__)
    parser.add_argument("other_src", type=Path, nargs="?", help="another checkout's src")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument(
        "--slots", type=int, default=100, help="jobs settled and claimed per exchange (100)"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = asyncio.run(
            timed_run(args.postgres_url, args.jobs, args.calls, args.tenants, args.slots)
        )
        print(orjson.dumps(result).decode())
        return 0
    sides = [("this", REPO_ROOT / "src")]
    if args.other_src is not None:
        sides.insert(0, ("other", args.other_src))
    runs: dict[str, list[dict[str, float]]] = {side: [] for side, _ in sides}
    for i in range(args.rounds):
        for side, src in sides if i % 2 == 0 else sides[::-1]:
            runs[side].append(run_side(src, args))
            got = runs[side][-1]
            print(
                f"round {i + 1} {side}: p10 {got['p10']:.2f} ms, median {got['median']:.2f} ms, "
                f"CPU per exchange: server {got['server_cpu']:.2f} ms, "
                f"client {got['client_cpu']:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
    for metric in ("p10", "median", "server_cpu", "client_cpu"):
        medians = {}
        for side, _ in sides:
            values = [r[metric] for r in runs[side]]
            medians[side] = statistics.median(values)
            rounds = " · ".join(f"{v:.2f}" for v in values)
            print(f"{metric} {side}: {medians[side]:.2f} ms ({rounds})")
        if "other" in medians:
            per = " · ".join(
                f"{b[metric] / a[metric]:.2f}"
                for a, b in zip(runs["other"], runs["this"], strict=True)
            )
            print(f"{metric} this / other: {medians['this'] / medians['other']:.2f} ({per})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
