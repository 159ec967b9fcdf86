"""HTTP load benchmark: ``POST /v1/requests`` at fixed arrival rates (issue 4).

``.venv/bin/python -m bench.http_load --help``

An **open-loop** load generator: request *i* of a step is due at ``t0 + i / rate`` whether or
not earlier ones have been answered, and its latency is measured from that scheduled time to
the end of its response. A server that stalls therefore shows the queueing it causes (no
coordinated omission, as in wrk2); ``service p99`` (from the moment a connection actually
wrote the request) is printed beside it to show what a closed-loop tool would have reported.

The client is cheap on purpose, since it shares this machine's cores with the server, the
worker and PostgreSQL: raw asyncio streams on uvloop, a fixed pool of keep-alive
connections fed from one queue, and one pre-encoded request. Its own CPU is measured and
reported, as are the CPU of the API process(es), of the worker, of PostgreSQL's processes
and of the whole machine, each over the measured window of each step.

Setups (``--setup``, repeatable):

- ``postgresql``: ``conveyor api`` (one process) beside one ``conveyor worker`` serving the
  no-op kind ``bench.noop`` (queue ``bench``), on a fresh database
  ``conveyor_http_<random>`` that is dropped ``WITH (FORCE)`` after the run;
- ``postgresql-uvloop`` and ``postgresql-2api`` (informational): the same app served by
  uvicorn's own command on uvloop, as one process or as two worker processes sharing one
  socket. ``conveyor api`` has neither option (it runs uvicorn inside ``asyncio.run``, so
  the stock event loop, and one process), so the bench runs
  ``python -m uvicorn bench.http_load:app_factory --factory --loop uvloop --workers N``;
  :func:`app_factory` configures logging as the CLI does and calls
  ``conveyor.api.create_app()``. Each process keeps its own in-memory rate-limit counters
  and statistics cache;
- ``sqlite``: ``conveyor serve`` (API and worker in one process) on a temporary file;
  informational.

Every server runs with ``CONVEYOR_LOG_LEVEL=WARNING`` and JSON logs to a temporary file, so
the access log's line per request (INFO) is not written; measured at 250 requests/s, INFO
cost about the same API CPU per request, within this machine's noise. The rate limits are
raised to ``10000000/minute`` per address and per caller (the defaults, 200 per 15 minutes
per address and 1,000 per caller, would answer 429 within seconds).

Callers (``--auth``, repeatable; default both): every request carries ``Authorization:
Bearer`` with either an API key (``key``: looked up by its prefix and its digest compared
on every call) or a JWT access token (``jwt``: a signature check, then the tenant read),
of a tenant and a member user made on the fresh database through the accounts service
once the API has migrated it. Each caller is a setup of its own in the report
(``postgresql/key``, ``postgresql/jwt``...). Before issue 12 the API took anonymous calls;
their figures are in ``docs/benchmarks.md``. An access token lives
``CONVEYOR_ACCESS_TOKEN_SECONDS`` (15 minutes), longer than one run of a setup.

Each run of a setup gets a fresh database and fresh processes, then steps through the rates
in order; each step is a warm-up at the step's rate followed by the measured window at the
same rate. On PostgreSQL the bench runs ``ANALYZE conveyor_jobs, conveyor_requests``
halfway through each warm-up (``--no-analyze`` skips it), as autovacuum would as the tables
grow (this machine's server has ``autovacuum=off``): with the statistics of a fresh
database's empty tables, the worker's backend alone burned most of a core on sequential
scans of the jobs table. The runs are interleaved (run 1 of every setup, then run 2, ...);
each figure is the median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import functools
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import asyncpg
import orjson
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_PREFIX = "conveyor_http_"
KIND = "bench.noop"
QUEUE = "bench"
UNLIMITED = "10000000/minute"
SETUPS = ("postgresql", "postgresql-uvloop", "postgresql-2api", "sqlite")
AUTHS = ("key", "jwt")
TARGET_RATE = 1000
TARGET_P99_MS = 50.0
STATUS_ERROR = -1
STATUS_UNANSWERED = -2


class BenchError(Exception):
    """The benchmark could not run."""


# -- the app for ``uvicorn --workers 2`` ---------------------------------------------------
def app_factory() -> Any:
    """``conveyor api``'s app for uvicorn's ``--factory``: logging configured as the CLI
    configures it (from ``CONVEYOR_LOG_LEVEL``/``CONVEYOR_LOG_FORMAT``), kinds from
    ``CONVEYOR_IMPORTS``. Runs in each uvicorn worker process."""
    from conveyor.api import create_app
    from conveyor.config import Settings
    from conveyor.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


# -- the HTTP client -----------------------------------------------------------------------
def post_request(host: str, port: int, path: str, body: bytes, authorization: str = "") -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get_request(host: str, port: int, path: str, authorization: str = "") -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode()


class Connection:
    """One keep-alive HTTP/1.1 connection (enough of HTTP for this server's answers)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``, read the response: (status, body). Opens the connection
        first if it is not open; closes it if the server asked to."""
        if self._reader is None or self._writer is None:
            await self.open()
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise ConnectionError("not connected")
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            body = await _read_chunked(reader)
        else:
            at = lower.find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            body = await reader.readexactly(length) if length else b""
        if b"connection: close" in lower:
            self.close()
        return status, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def http_get(host: str, port: int, path: str, authorization: str = "") -> tuple[int, bytes]:
    conn = Connection(host, port)
    try:
        return await conn.call(get_request(host, port, path, authorization))
    finally:
        conn.close()


# -- CPU accounting ------------------------------------------------------------------------
Watch = tuple[list[int], list[int], str | None]
"""What :func:`snapshot` measures: API process ids, worker process ids, database name."""


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    at: float
    machine_busy: float
    client: float
    server: float
    worker: float
    postgres: dict[int, float]


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and their children (uvicorn's worker processes)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            total += _cpu(root) + sum(_cpu(child) for child in root.children(recursive=True))
        except psutil.Error:
            continue
    return total


def _postgres_cpu(database: str | None) -> dict[int, float]:
    """CPU seconds of the PostgreSQL server's processes that work for the bench: the
    backends connected to ``database`` and the server's own processes (WAL writer,
    checkpointer, ...), not the backends of other databases (other users of the server)."""
    found: dict[int, float] = {}
    if database is None:
        return found
    for proc in psutil.process_iter(["username", "cmdline", "cpu_times"]):
        info = proc.info
        if info.get("username") != "postgres" or info.get("cpu_times") is None:
            continue
        title = " ".join(info.get("cmdline") or [])
        words = title.split()
        # A client backend's title: "postgres: 15/main: USER DATABASE HOST(PORT) STATE".
        is_backend = len(words) >= 5 and "(" in words[4] and words[1].endswith(":")
        if is_backend and words[3] != database:
            continue
        t = info["cpu_times"]
        found[proc.pid] = float(t.user + t.system)
    return found


def snapshot(server: list[int], worker: list[int], database: str | None) -> CpuSnapshot:
    t = psutil.cpu_times()
    busy = float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
    return CpuSnapshot(
        at=time.perf_counter(),
        machine_busy=busy,
        client=_cpu(psutil.Process()),
        server=_tree_cpu(server),
        worker=_tree_cpu(worker),
        postgres=_postgres_cpu(database),
    )


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Percent of one core over a window (200 = both cores of this machine)."""

    client: float
    server: float
    worker: float
    postgres: float
    machine: float
    """Busy time of all CPUs (``/proc/stat``), approximate: in this VM it has read below
    the sum of the processes' own times."""


def cpu_use(a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
    span = b.at - a.at
    pg = sum(v - a.postgres.get(pid, 0.0) for pid, v in b.postgres.items())

    def pct(seconds: float) -> float:
        return 100.0 * seconds / span if span > 0 else float("nan")

    return CpuUse(
        client=pct(b.client - a.client),
        server=pct(b.server - a.server),
        worker=pct(b.worker - a.worker),
        postgres=pct(pg),
        machine=pct(b.machine_busy - a.machine_busy),
    )


# -- one step: a fixed rate ----------------------------------------------------------------
@dataclass(slots=True)
class Samples:
    """Per request of a step: when it was due, sent and answered, and its status."""

    rate: float
    warmup: int
    total: int
    t0: float = 0.0
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sent = [math.nan] * self.total
        self.done = [math.nan] * self.total
        self.status = [STATUS_UNANSWERED] * self.total

    def due(self, i: int) -> float:
        return self.t0 + i / self.rate


@dataclass(frozen=True, slots=True)
class Load:
    host: str
    port: int
    request: bytes
    connections: int
    drain_timeout_s: float


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection of the load: sends request *i* when the pool hands it one,
    parses the answer in ``data_received`` and goes back to the pool. Callbacks only, no
    task or future per request: the client shares the cores it measures, and the
    stream-based client cost about 0.3 ms of CPU per request."""

    def __init__(self, pool: _LoadPool) -> None:
        self._pool = pool
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._current = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._pool.idle(self)

    def send(self, i: int) -> None:
        if self._transport is None:
            raise ConnectionError("not connected")
        self._current = i
        self._pool.samples.sent[i] = time.perf_counter()
        self._transport.write(self._pool.load.request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0 or self._current < 0:
            # Chunked or unasked-for answers are not what this server sends: count an error.
            self._fail()
            return
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15 : stop if stop >= 0 else len(head)])
        size = end + 4 + length
        if len(buffer) < size:
            return
        status = int(buffer[9:12])
        del buffer[:size]
        i, self._current = self._current, -1
        self._pool.answered(i, status)
        if b"connection: close" in head:
            self.close()
            return
        self._pool.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._current >= 0:
            i, self._current = self._current, -1
            self._pool.answered(i, STATUS_ERROR)
        self._pool.lost(self)

    def _fail(self) -> None:
        if self._current >= 0:
            i, self._current = self._current, -1
            self._pool.answered(i, STATUS_ERROR)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _LoadPool:
    """A fixed number of connections fed from one queue of due requests: a due request goes
    to an idle connection at once, else waits for the first connection to be free."""

    def __init__(self, load: Load, samples: Samples, finished: Callable[[], None]) -> None:
        self.load = load
        self.samples = samples
        self._finished = finished
        self._pending: collections.deque[int] = collections.deque()
        self._idle: list[_LoadConnection] = []
        self._opening: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._connections: list[_LoadConnection] = []

    def open(self) -> None:
        for _ in range(self.load.connections):
            self._open_one()

    def submit(self, i: int) -> None:
        if self._idle:
            self._idle.pop().send(i)
        else:
            self._pending.append(i)

    def idle(self, conn: _LoadConnection) -> None:
        if self._pending:
            conn.send(self._pending.popleft())
        else:
            self._idle.append(conn)

    def answered(self, i: int, status: int) -> None:
        self.samples.done[i] = time.perf_counter()
        self.samples.status[i] = status
        self._finished()

    def lost(self, conn: _LoadConnection) -> None:
        """A connection closed (the server's keep-alive timeout closes idle ones between
        steps): forget it and open one in its place."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn in self._connections:
            self._connections.remove(conn)
        self._open_one()

    def _open_one(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect())
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _LoadConnection(self), self.load.host, self.load.port
            )
        except OSError:
            await asyncio.sleep(0.1)
            self._open_one()
            return
        self._connections.append(conn)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for conn in self._connections:
            conn.close()


async def run_step(
    load: Load,
    rate: float,
    warmup_s: float,
    duration_s: float,
    watch: Watch,
    midway: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> tuple[Samples, CpuUse]:
    """Send at ``rate`` for ``warmup_s + duration_s``; the CPU use of the measured window.
    ``midway`` is started halfway through the warm-up (the PostgreSQL setups' ANALYZE)
    and awaited before this returns."""
    n_warm = round(rate * warmup_s)
    samples = Samples(rate=rate, warmup=n_warm, total=n_warm + round(rate * duration_s))
    all_done = asyncio.Event()
    count = 0

    def finished() -> None:
        nonlocal count
        count += 1
        if count == samples.total:
            all_done.set()

    pool = _LoadPool(load, samples, finished)
    pool.open()
    loop = asyncio.get_running_loop()
    snaps: list[asyncio.Future[CpuSnapshot]] = []
    side: list[asyncio.Task[None]] = []

    def at(i: int) -> None:
        if i == n_warm // 2 and midway is not None:
            side.append(asyncio.create_task(midway()))
        if i == n_warm:
            snaps.append(loop.run_in_executor(None, snapshot, *watch))

    try:
        await _schedule(samples, pool.submit, at)
        snaps.append(loop.run_in_executor(None, snapshot, *watch))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), load.drain_timeout_s)
    finally:
        await pool.close()
        await asyncio.gather(*side)
    first, last = await asyncio.gather(*snaps)
    return samples, cpu_use(first, last)


async def _schedule(
    samples: Samples, submit: Callable[[int], None], at: Callable[[int], None]
) -> None:
    """Submit request i at ``t0 + i / rate`` (those already due at once: the loop wakes up
    about once a millisecond, and the latency counts from the due time anyway). ``at(i)``
    is called just before request i is submitted."""
    clock = time.perf_counter
    rate, total = samples.rate, samples.total
    samples.t0 = t0 = clock() + 0.05
    i = 0
    while i < total:
        now = clock()
        due = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
        while i < due:
            at(i)
            submit(i)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - clock()))


# -- figures -------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class StepResult:
    setup: str
    run: int
    rate: int
    sent: int
    answered: int
    statuses: dict[str, int]
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    service_p99_ms: float
    """From the moment a connection wrote the request: what a closed-loop tool reports."""
    send_lag_p99_ms: float
    """From the due time to the write: the client's own lag plus waiting for one of its
    connections to be free (all busy when the server falls behind)."""
    cpu: CpuUse
    queued_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return set(self.statuses) == {"202"}

    @property
    def cpu_ms_api(self) -> float:
        """CPU of the API process(es) per answered request, ms."""
        return 10.0 * self.cpu.server / self.achieved_rate if self.achieved_rate else math.nan

    @property
    def cpu_ms_all(self) -> float:
        """CPU per answered request of API, worker, PostgreSQL and the client, ms: what
        the two cores can afford at a rate is 2000 / rate ms."""
        c = self.cpu
        if not self.achieved_rate:
            return math.nan
        return 10.0 * (c.server + c.worker + c.postgres + c.client) / self.achieved_rate


def summarize(setup: str, run: int, rate: int, samples: Samples, cpu: CpuUse) -> StepResult:
    """Figures over the measured window (requests due after the warm-up)."""
    window = range(samples.warmup, samples.total)
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    service: list[float] = []
    lag: list[float] = []
    last_done = samples.due(samples.warmup)
    for i in window:
        code = samples.status[i]
        name = {STATUS_ERROR: "error", STATUS_UNANSWERED: "unanswered"}.get(code, str(code))
        statuses[name] = statuses.get(name, 0) + 1
        if code < 0:
            continue
        due, sent, done = samples.due(i), samples.sent[i], samples.done[i]
        latencies.append((done - due) * 1000.0)
        service.append((done - sent) * 1000.0)
        lag.append((sent - due) * 1000.0)
        last_done = max(last_done, done)
    latencies.sort()
    service.sort()
    lag.sort()
    span = last_done - samples.due(samples.warmup)
    answered = len(latencies)
    return StepResult(
        setup=setup,
        run=run,
        rate=rate,
        sent=len(window),
        answered=answered,
        statuses=dict(sorted(statuses.items())),
        achieved_rate=answered / span if span > 0 else math.nan,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else math.nan,
        mean_ms=statistics.fmean(latencies) if latencies else math.nan,
        service_p99_ms=percentile(service, 99),
        send_lag_p99_ms=percentile(lag, 99),
        cpu=cpu,
    )


# -- servers -------------------------------------------------------------------------------
def conveyor_command() -> list[str]:
    script = Path(sys.executable).parent / "conveyor"
    if script.exists():
        return [str(script)]
    found = shutil.which("conveyor")
    return [found] if found else [sys.executable, "-m", "conveyor.cli.main"]


def server_env(url: str, port: int) -> dict[str, str]:
    """A server's environment: this one's minus any ``CONVEYOR_*``, plus the bench's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_DATABASE_URL=url,
        CONVEYOR_PORT=str(port),
        CONVEYOR_HOST="127.0.0.1",
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_LOG_FORMAT="json",
        CONVEYOR_RATE_LIMIT_PER_IP=UNLIMITED,
        CONVEYOR_RATE_LIMIT_PER_CALLER=UNLIMITED,
        CONVEYOR_IMPORTS="bench.kinds",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def server_commands(setup: str, port: int) -> tuple[list[str], list[str] | None]:
    """The API (or API + worker) command, and the separate worker's command if any."""
    worker = [*conveyor_command(), "worker", "--queues", QUEUE]
    if setup == "postgresql":
        return [*conveyor_command(), "api"], worker
    if setup in ("postgresql-uvloop", "postgresql-2api"):
        workers = "2" if setup == "postgresql-2api" else "1"
        uvicorn = [sys.executable, "-m", "uvicorn", "bench.http_load:app_factory", "--factory"]
        uvicorn += ["--workers", workers, "--loop", "uvloop", "--http", "httptools"]
        uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
        uvicorn += ["--no-access-log", "--no-server-header", "--log-level", "warning"]
        return uvicorn, worker
    return [*conveyor_command(), "serve", "--queues", QUEUE], None


async def spawn(
    command: list[str], env: dict[str, str], log: IO[bytes]
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, SIGKILL after 30 s."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def tail(log: IO[bytes], lines: int = 10) -> str:
    log.seek(0)
    return "\n".join(log.read().decode(errors="replace").strip().splitlines()[-lines:])


async def wait_ready(port: int, proc: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.returncode is None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            status, _ = await http_get("127.0.0.1", port, "/ready")
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise BenchError("the API did not become ready")


async def wait_worker(
    port: int, proc: asyncio.subprocess.Process, authorization: str, timeout: float = 60.0
) -> None:
    """Until ``GET /v1/queues`` shows a limit for the bench queue (a live worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.returncode is None:
        queue = await queue_stats(port, authorization)
        if queue is not None and queue.get("limit") is not None:
            return
        await asyncio.sleep(0.1)
    raise BenchError("the worker did not register")


async def queue_stats(port: int, authorization: str) -> dict[str, Any] | None:
    status, body = await http_get("127.0.0.1", port, "/v1/queues", authorization)
    if status != 200:
        raise BenchError(f"GET /v1/queues answered {status}: {body[:200]!r}")
    queues: list[dict[str, Any]] = orjson.loads(body)["queues"]
    return next((q for q in queues if q["name"] == QUEUE), None)


@dataclass(slots=True)
class Servers:
    port: int
    api: asyncio.subprocess.Process
    worker: asyncio.subprocess.Process | None
    database: str | None
    """PostgreSQL: the database's name (its backends' CPU is measured)."""
    callers: dict[str, str]
    """``Authorization`` values by ``--auth`` mode (see :func:`provision`)."""

    @property
    def watch(self) -> Watch:
        return [self.api.pid], [self.worker.pid] if self.worker else [], self.database


@contextlib.asynccontextmanager
async def servers(
    setup: str, url: str, port: int, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Servers]:
    """The API (and worker) on ``url``, yielded once ready and the worker registered;
    ``extra_env``: more ``CONVEYOR_*`` settings for both."""
    env = {**server_env(url, port), **(extra_env or {})}
    api_cmd, worker_cmd = server_commands(setup, port)
    with tempfile.TemporaryFile() as api_log, tempfile.TemporaryFile() as worker_log:
        api = await spawn(api_cmd, env, api_log)
        worker: asyncio.subprocess.Process | None = None
        try:
            try:
                await wait_ready(port, api)
                callers = await provision(url)
                if worker_cmd is not None:
                    worker = await spawn(worker_cmd, env, worker_log)
                await wait_worker(port, worker if worker is not None else api, callers["key"])
            except BenchError as exc:
                logs = f"API:\n{tail(api_log)}"
                if worker is not None:
                    logs += f"\nworker:\n{tail(worker_log)}"
                raise BenchError(f"{setup}: {exc}\n{logs}") from exc
            yield Servers(port, api, worker, database_name(url), callers)
        finally:
            if worker is not None:
                await stop(worker)
            await stop(api)


async def provision(url: str) -> dict[str, str]:
    """A tenant, a member user and an API key on the (migrated) database at ``url``,
    made through the accounts service as the CLI makes them: ``Authorization`` values
    for each ``--auth`` mode."""
    from conveyor.accounts import Accounts, Principal
    from conveyor.config import Settings
    from conveyor.store import make_store
    from conveyor.store.accounts import READ, WRITE, Role

    settings = Settings(database_url=url)
    store = make_store(settings)
    await store.open()
    try:
        accounts = Accounts(store, settings)
        await accounts.start()
        tenant = await accounts.create_tenant("Bench")
        email, password = f"bench-{secrets.token_hex(4)}@bench.example.com", secrets.token_urlsafe()
        await accounts.create_user(email, password)
        await accounts.add_member(tenant.id, email, Role.MEMBER)
        token = (await accounts.login(email, password, tenant.id)).access_token
        _, key = await accounts.create_api_key(
            Principal.console(), "bench", [READ, WRITE], tenant_id=tenant.id
        )
    finally:
        await store.close()
    return {"key": f"Bearer {key}", "jwt": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def fresh_database(setup: str, admin_url: str, tmpdir: str | None) -> AsyncIterator[str]:
    """PostgreSQL: ``CREATE DATABASE conveyor_http_<random>``, dropped ``WITH (FORCE)``
    afterwards. SQLite: a file in a new temporary directory."""
    if setup == "sqlite":
        with tempfile.TemporaryDirectory(prefix="conveyor-http-", dir=tmpdir) as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    name = f"{DB_PREFIX}{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base, _, _ = admin_url.rpartition("/")
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def database_name(url: str) -> str | None:
    return None if url.startswith("sqlite") else url.rpartition("/")[2].split("?")[0]


async def analyze(url: str, timings: dict[str, Any]) -> None:
    """``ANALYZE`` the tables a POST writes, as autovacuum would (this server may run with
    ``autovacuum=off``): with the statistics of a fresh database's empty tables the
    worker's statements scan the whole jobs table."""
    t = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE conveyor_jobs, conveyor_requests")
    finally:
        await conn.close()
    timings["analyze_ms"] = round((time.perf_counter() - t) * 1000.0, 1)


async def count_jobs(url: str) -> int | None:
    """Rows in the jobs table (PostgreSQL; None for SQLite)."""
    if url.startswith("sqlite"):
        return None
    conn = await asyncpg.connect(url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM conveyor_jobs")
        return n
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the benchmark -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    setups: tuple[str, ...]
    rates: tuple[int, ...]
    runs: int
    warmup_s: float
    first_warmup_s: float
    duration_s: float
    connections: int
    drain_timeout_s: float
    pause_s: float
    analyze: bool
    postgres_url: str
    tmpdir: str | None
    auths: tuple[str, ...] = AUTHS


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_setup(setup: str, auth: str, run: int, opts: Options) -> list[StepResult]:
    """One run of one setup with one kind of caller (``auth``): fresh database and
    processes, every rate in order."""
    body = orjson.dumps({"kind": KIND, "input": {"source": "bench.http_load"}})
    results: list[StepResult] = []
    label = f"{setup}/{auth}"
    async with fresh_database(setup, opts.postgres_url, opts.tmpdir) as url:
        port = free_port()
        async with servers(setup, url, port) as procs:
            load = Load(
                "127.0.0.1",
                port,
                post_request("127.0.0.1", port, "/v1/requests", body, procs.callers[auth]),
                opts.connections,
                opts.drain_timeout_s,
            )
            for n, rate in enumerate(opts.rates):
                warmup = opts.first_warmup_s if n == 0 else opts.warmup_s
                timings: dict[str, Any] = {}
                midway = None
                if procs.database is not None and opts.analyze:
                    midway = functools.partial(analyze, url, timings)
                samples, cpu = await run_step(
                    load, rate, warmup, opts.duration_s, procs.watch, midway
                )
                result = summarize(label, run, rate, samples, cpu)
                await asyncio.sleep(opts.pause_s)
                queue = await queue_stats(port, procs.callers["key"])
                if queue is not None:
                    result.queued_after = int(queue.get("due", 0))
                result.extra = {**timings, "jobs_in_table": await count_jobs(url)}
                results.append(result)
                progress(f"  {label} run {run} {line(result)}")
                if procs.api.returncode is not None:
                    raise BenchError(f"{setup}: the API exited with {procs.api.returncode}")
    return results


def line(r: StepResult) -> str:
    codes = " ".join(f"{k}:{v}" for k, v in r.statuses.items())
    return (
        f"{r.rate:>5}/s achieved {r.achieved_rate:7.1f}/s  p50 {r.p50_ms:7.2f}  "
        f"p95 {r.p95_ms:7.2f}  p99 {r.p99_ms:8.2f}  max {r.max_ms:8.2f} ms  "
        f"(service p99 {r.service_p99_ms:7.2f}, send lag p99 {r.send_lag_p99_ms:5.2f})  "
        f"cpu% api {r.cpu.server:5.1f} worker {r.cpu.worker:5.1f} pg {r.cpu.postgres:5.1f} "
        f"client {r.cpu.client:5.1f} (machine {r.cpu.machine:5.1f}/200)  "
        f"cpu ms/req api {r.cpu_ms_api:4.2f} all {r.cpu_ms_all:4.2f}  "
        f"due after {r.queued_after}  jobs {r.extra.get('jobs_in_table')}  [{codes}]"
    )


def _median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


MEDIAN_FIELDS = ("achieved_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms", "service_p99_ms")
CPU_FIELDS = ("server", "worker", "postgres", "client", "machine")


def medians(results: list[StepResult]) -> list[dict[str, Any]]:
    """One row per (setup, rate): the median of its runs, and all status counts."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r.setup, r.rate) for r in results))
    for setup, rate in keys:
        runs = [r for r in results if (r.setup, r.rate) == (setup, rate)]
        row: dict[str, Any] = {"setup": setup, "rate": rate, "runs": len(runs)}
        for name in MEDIAN_FIELDS:
            row[name] = _median([getattr(r, name) for r in runs])
        for name in CPU_FIELDS:
            row[f"cpu_{name}"] = _median([getattr(r.cpu, name) for r in runs])
        row["cpu_ms_api"] = _median([r.cpu_ms_api for r in runs])
        row["cpu_ms_all"] = _median([r.cpu_ms_all for r in runs])
        statuses: dict[str, int] = {}
        for r in runs:
            for code, n in r.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        row["statuses"] = statuses
        row["p99_runs"] = [r.p99_ms for r in runs]
        rows.append(row)
    return rows


def results_from_json(data: dict[str, Any]) -> list[StepResult]:
    """The runs of a results file written by :func:`main`."""
    out: list[StepResult] = []
    for run in data["runs"]:
        fields = dict(run)
        fields["cpu"] = CpuUse(**fields["cpu"])
        out.append(StepResult(**fields))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| setup | rate (req/s) | achieved (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) "
        "| p99 of each run (ms) | statuses | CPU % api / worker / PostgreSQL / client "
        "| CPU ms per request: api / all |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        runs = ", ".join(f"{v:.1f}" for v in row["p99_runs"])
        codes = ", ".join(f"{k}: {v:,}" for k, v in row["statuses"].items())
        cpu = " / ".join(f"{row[f'cpu_{n}']:.0f}" for n in CPU_FIELDS[:4])
        out.append(
            f"| {row['setup']} | {row['rate']:,} | {row['achieved_rate']:,.0f} | "
            f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['max_ms']:.1f} | {runs} | {codes} | {cpu} | "
            f"{row['cpu_ms_api']:.2f} / {row['cpu_ms_all']:.2f} |"
        )
    return "\n".join(out)


def verdict(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["setup"].startswith("postgresql/") and row["rate"] == TARGET_RATE:
            met = row["p99_ms"] <= TARGET_P99_MS and set(row["statuses"]) == {"202"}
            lines.append(
                f"target p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE:,}/s on PostgreSQL "
                f"with {row['setup'].split('/', 1)[1]} (all 202): "
                f"{'MET' if met else 'MISSED'} (median p99 {row['p99_ms']:.1f} ms)"
            )
    return "\n".join(lines) or "target not measured (needs --setup postgresql and rate 1000)"


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    return platform.processor()


def _postgres_version(url: str) -> str:
    async def go() -> str:
        conn = await asyncpg.connect(url)
        try:
            version: str = await conn.fetchval("SHOW server_version")
            return version
        finally:
            await conn.close()

    try:
        return str(run_loop(go()))
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at {url} cannot be reached: {exc}") from exc


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed: a cheaper client leaves more CPU to the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def run_all(opts: Options) -> list[StepResult]:
    results: list[StepResult] = []
    for run in range(1, opts.runs + 1):
        for setup in opts.setups:
            for auth in opts.auths:
                progress(f"{setup}/{auth}: run {run} of {opts.runs}")
                results += await run_setup(setup, auth, run, opts)
    return results


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_load",
        description="Open-loop HTTP load on POST /v1/requests at fixed rates; latency from "
        "each request's scheduled send time (see docs/benchmarks.md, HTTP API).",
    )
    parser.add_argument(
        "--setup",
        action="append",
        choices=[*SETUPS, "all"],
        help="postgresql (conveyor api + conveyor worker), postgresql-uvloop / "
        "postgresql-2api (the same app under uvicorn's command on uvloop, 1 or 2 "
        "processes), sqlite (conveyor serve); repeatable (default: postgresql and sqlite)",
    )
    parser.add_argument(
        "--auth",
        action="append",
        choices=AUTHS,
        help="the callers' credential: key (an API key) or jwt (an access token); "
        "repeatable (default: both)",
    )
    parser.add_argument("--rates", type=_ints, default=(250, 500, 1000), help="req/s, in order")
    parser.add_argument("--runs", type=int, default=3, help="runs per setup (3)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured s per rate (15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up s per rate (3)")
    parser.add_argument(
        "--first-warmup", type=float, default=5.0, help="warm-up s of a run's first rate (5)"
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="keep-alive connections of the client (64)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="s to wait for answers after the last send; later ones count as unanswered (60)",
    )
    parser.add_argument(
        "--pause", type=float, default=2.0, help="s between rates, for the worker (2)"
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: do not ANALYZE conveyor_jobs and conveyor_requests halfway "
        "through each warm-up (what autovacuum would do; this server may have it off)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL admin URL: conveyor_http_<random> is created on its server per run "
        f"and dropped after (default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--tmpdir", help="folder for the SQLite files (default: system temp)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    parser.add_argument("--quick", action="store_true", help="1 run, 5 s per rate, 2 s warm-up")
    parser.add_argument(
        "--markdown-from",
        metavar="RESULTS.json",
        help="run nothing: print the runs and the table of medians of a results file",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    setups = args.setup or ["postgresql", "sqlite"]
    if "all" in setups:
        setups = list(SETUPS)
    quick = bool(args.quick)
    opts = Options(
        setups=tuple(dict.fromkeys(setups)),
        rates=args.rates,
        runs=1 if quick else args.runs,
        warmup_s=2.0 if quick else args.warmup,
        first_warmup_s=2.0 if quick else args.first_warmup,
        duration_s=5.0 if quick else args.duration,
        connections=args.connections,
        drain_timeout_s=args.drain_timeout,
        pause_s=args.pause,
        analyze=not args.no_analyze,
        postgres_url=args.postgres_url,
        tmpdir=args.tmpdir,
        auths=tuple(dict.fromkeys(args.auth or AUTHS)),
    )
    if opts.runs < 1 or opts.connections < 1 or opts.duration_s <= 0 or opts.warmup_s < 0:
        raise BenchError("--runs and --connections must be >= 1, --duration > 0, --warmup >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown_from:
        data = orjson.loads(Path(args.markdown_from).read_bytes())
        stored = results_from_json(data)
        for r in stored:
            print(f"  {r.setup:<17} run {r.run}  {line(r)}")
        rows = medians(stored)
        print(f"\n{markdown(rows)}\n\n{verdict(rows)}")
        return 0
    try:
        opts = options_from(args)
        info = machine()
        if any(s.startswith("postgresql") for s in opts.setups):
            info["postgresql"] = _postgres_version(opts.postgres_url)
    except BenchError as exc:
        print(f"bench.http_load: error: {exc}", file=sys.stderr)
        return 2
    started = dt.datetime.now().astimezone()
    print(f"HTTP load: POST /v1/requests {{kind: {KIND}}}, open loop, {started:%Y-%m-%d %H:%M %Z}")
    for key, value in info.items():
        print(f"  {key:<13} {value}")
    print(f"  options       {asdict(opts)}")
    print("  servers       CONVEYOR_LOG_LEVEL=WARNING, rate limits " + UNLIMITED, flush=True)
    try:
        results = run_loop(run_all(opts))
    except BenchError as exc:
        print(f"bench.http_load: error: {exc}", file=sys.stderr)
        return 1
    print("\nall runs (latency from the scheduled send time, ms; CPU % of one core):")
    for r in results:
        print(f"  {r.setup:<16} run {r.run}  {line(r)}")
    rows = medians(results)
    print(f"\nmedians of {opts.runs} run(s):\n{markdown(rows)}\n\n{verdict(rows)}")
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"http-{started:%Y%m%d-%H%M%S}.json"
        data = {
            "started": started.isoformat(),
            "machine": info,
            "options": asdict(opts),
            "runs": [asdict(r) for r in results],
            "medians": rows,
            "commit": _git_commit(),
        }
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        print(f"\nresults written to {path}")
    bad = [r for r in results if not r.ok]
    return 1 if bad else 0


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    return ""


if __name__ == "__main__":
    sys.exit(main())
