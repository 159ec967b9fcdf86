"""Helpers the benchmarks share: filling a queue, and real ``conveyor worker`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

from bench import kinds
from bench.stores import BenchError, StoreConfig
from conveyor import Client, Settings


async def enqueue_noop(settings: Settings, n: int, batch: int) -> None:
    """Queue ``n`` no-op jobs in transactions of ``batch`` (the untimed set-up)."""
    client = await Client.connect(settings)
    async with client:
        for start in range(0, n, batch):
            count = min(batch, n - start)
            await client.enqueue_many(client.prepare(kinds.NOOP) for _ in range(count))


async def fill(store: StoreConfig, url: str, n: int, batch: int = 10_000) -> None:
    """Queue ``n`` no-op jobs, then what the store needs after a bulk fill (PostgreSQL:
    ``ANALYZE conveyor_jobs``, so the planner does not work from the empty table's
    statistics). Never timed."""
    await enqueue_noop(store.settings(url), n, batch)
    await store.backend.after_fill(url)


def conveyor_command() -> list[str]:
    """The installed ``conveyor`` script next to this interpreter (as a user runs it)."""
    script = Path(sys.executable).parent / "conveyor"
    if script.exists():
        return [str(script)]
    found = shutil.which("conveyor")
    if found:
        return [found]
    return [sys.executable, "-m", "conveyor.cli.main"]


def worker_args(queue: str, concurrency: int | None, *, burst: bool) -> list[str]:
    """``conveyor worker`` arguments; ``concurrency`` None leaves it at its default."""
    args = ["worker", "--import", "bench.kinds", "--queues", queue]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    return [*args, "--burst"] if burst else args


async def spawn_worker(
    store: StoreConfig,
    url: str,
    args: list[str],
    stderr: IO[bytes],
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """A ``conveyor worker`` subprocess; ``env``: settings beside the store's."""
    return await asyncio.create_subprocess_exec(
        *conveyor_command(),
        *args,
        env={**store.process_env(url), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )


def tail(stream: IO[bytes], lines: int = 8) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


async def wait_for_worker(
    client: Client, alive: Callable[[], bool], timeout: float = 30.0, count: int = 1
) -> bool:
    """Wait until ``count`` workers have registered in the database; False if one died or
    it timed out."""
    deadline = time.monotonic() + timeout
    while len(await client.workers()) < count:
        if not alive() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@contextlib.asynccontextmanager
async def running_worker(
    store: StoreConfig,
    url: str,
    client: Client,
    queue: str,
    concurrency: int = 10,
    env: dict[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A ``conveyor worker`` subprocess, yielded once it has registered in the database;
    stopped with SIGTERM on exit."""
    with tempfile.TemporaryFile() as stderr:
        args = worker_args(queue, concurrency, burst=False)
        proc = await spawn_worker(store, url, args, stderr, env)
        try:
            if not await wait_for_worker(client, lambda: proc.returncode is None):
                raise BenchError(f"worker did not start:\n{tail(stderr)}")
            yield proc
        finally:
            await stop_process(proc)


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (a graceful stop), SIGKILL after 30 s; the exit code."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
