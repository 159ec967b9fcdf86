"""``python -m bench.against OTHER_SRC [--rounds N] -- BENCH_ARGS``: the same benchmark on
this checkout's code and on another's, alternated, and the ratios of their medians.

``OTHER_SRC`` is the ``src`` folder of another checkout of Conveyor (``git worktree add
--detach /tmp/base COMMIT``, then ``/tmp/base/src``). Each round runs ``python -m bench
BENCH_ARGS`` twice, once with that code first on ``PYTHONPATH`` (the bench itself, its
database set-up and its worker subprocesses all import it) and once with this checkout's,
in an order that alternates from round to round, so that a noisy spell on a shared
machine falls on both sides. Each row's figure per round is that run's median; the table
gives, per row and metric, the median over the rounds of each side, every round's value,
and the ratio this / other of the medians and of each round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.report import fmt
from bench.stores import REPO_ROOT

THIS_SRC = REPO_ROOT / "src"


RowKey = tuple[str, str, str, str]
"""A row's bench, title, store and settings: rows of one title differ in their settings
(the throughput rows at concurrency 100 and 10)."""


def run_bench(src: Path, bench_args: list[str]) -> dict[RowKey, dict[str, float]]:
    """One ``python -m bench`` run with ``src`` first on the path: each row's medians by
    its :data:`RowKey`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "bench", *bench_args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench failed with {src} ({done.returncode}):\n{done.stderr[-3000:]}")
    marker = "results written to "
    path = next(line for line in done.stdout.splitlines() if line.startswith(marker))
    data = orjson.loads(Path(path.removeprefix(marker)).read_bytes())
    return {
        (row["bench"], row["title"], row["store"], _settings(row)): {
            m["key"]: m["median"] for m in row["metrics"]
        }
        for row in data["rows"]
    }


def _settings(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row["settings"].items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, bench_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m bench.against",
        usage="python -m bench.against OTHER_SRC [--rounds N] -- BENCH_ARGS",
        description=__doc__,
    )
    parser.add_argument("other_src", type=Path, help="the other checkout's src folder")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(own)
    other: list[dict[RowKey, dict[str, float]]] = []
    this: list[dict[RowKey, dict[str, float]]] = []
    for i in range(args.rounds):
        order = [("other", args.other_src), ("this", THIS_SRC)]
        for side, src in order if i % 2 == 0 else order[::-1]:
            print(f"round {i + 1}: {side} ({src})", file=sys.stderr, flush=True)
            (other if side == "other" else this).append(run_bench(src, bench_args))
    print(
        "| row | settings | store | metric | other: median (rounds) | this: median (rounds) |",
        end="",
    )
    print(" ratio | per round |")
    print("|---|---|---|---|--:|--:|--:|---|")
    for key in other[0]:
        bench, title, store, settings = key
        for metric in other[0][key]:
            a = [r[key][metric] for r in other]
            b = [r[key][metric] for r in this]
            ma, mb = statistics.median(a), statistics.median(b)
            per = " · ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=True))
            print(
                f"| {bench}: {title} | {settings} | {store} | {metric} | {fmt(ma, 'jobs/s')} "
                f"({' · '.join(fmt(x, 'jobs/s') for x in a)}) | {fmt(mb, 'jobs/s')} "
                f"({' · '.join(fmt(x, 'jobs/s') for x in b)}) | {mb / ma:.2f} | {per} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
