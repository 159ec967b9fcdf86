"""``conveyor serve`` (API and a worker in one process) and ``conveyor api`` (API only).

Imported only by those two commands, so ``conveyor worker`` never loads FastAPI or uvicorn
(an idle worker's memory budget is 80 MB).

The event loop is uvloop's when it is installed (it is with ``uvicorn[standard]``, except on
Windows) and the HTTP parser httptools' (always installed with ``uvicorn[standard]``):
together they cost less CPU per request than asyncio's own loop and uvicorn's pure-Python
parser, h11 (docs/benchmarks.md). The protocol is uvicorn's httptools one with the read
timeout and head-size limits of :mod:`conveyor.cli.http_limits`, named explicitly rather
than left to ``http="auto"`` (which picks the same parser, without the limits).

Shutdown: the first SIGTERM or SIGINT stops both together: uvicorn stops accepting
connections and finishes the requests in flight, while the worker stops fetching and gives
running jobs ``CONVEYOR_SHUTDOWN_GRACE`` seconds before handing them back to the queue. A
second signal skips the waiting on both sides. The process exits 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from dataclasses import replace

import uvicorn

from conveyor.api import create_app
from conveyor.cli.http_limits import http_protocol
from conveyor.config import Settings
from conveyor.engine.kinds import Registry
from conveyor.engine.worker import Worker, WorkerConfig
from conveyor.logs import get_logger
from conveyor.notify.service import dispatching, install, with_notify_queues, worker_kinds
from conveyor.store import make_store
from conveyor.workloads import QUEUE_LIMITS

log = get_logger("serve")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling. uvicorn would install handlers
    that stop only the server and re-raise the signal once it has stopped, killing the
    process before the worker finished; :func:`run` handles the signals for both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        # uvicorn's own "running on" line goes to its unconfigured logger; say it here.
        for listener in self.servers:
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info(
                    "API listening",
                    url=f"http://{shown}:{port}",
                    docs=f"http://{shown}:{port}/docs",
                    loop=loop,
                )


def default_queues(kinds: Registry, settings: Settings) -> list[str]:
    """The queues ``conveyor serve`` works on when neither ``--queues`` nor
    ``CONVEYOR_QUEUES`` says: ``default`` and every registered kind's queue, with the
    seed's limits for the built-in ones (``video:2``, ``qa:10``) and
    ``CONVEYOR_CONCURRENCY`` for the rest."""
    names = sorted({"default", *kinds.queues()})
    return [f"{name}:{QUEUE_LIMITS.get(name, settings.concurrency)}" for name in names]


async def run(
    settings: Settings,
    kinds: Registry,
    worker_config: WorkerConfig | None,
) -> None:
    """Serve the API on ``settings.host:settings.port``, with a worker on the same store
    when ``worker_config`` is given, until SIGTERM or SIGINT.

    With a worker the store is opened here first (a bad database URL fails the command at
    once); without one the app opens its own and keeps retrying while the database is
    unreachable, answering 503 meanwhile.
    """
    store = make_store(settings) if worker_config is not None else None
    api_store = None
    if store is not None:
        await store.open()
    try:
        if store is not None:
            await store.migrate()
            # The API's calls act as the API's database role under row security, the
            # worker's as the login role: a store each. Where changes are heard by LISTEN
            # the worker hears the API's submissions at once; without it (SQLite, PgBouncer)
            # they share one store, whose notices are the only prompt wake-up, and the
            # API's calls are scoped in their statements alone.
            if store.capabilities.listen:
                api_store = make_store(settings, api=True)
                await api_store.open()
        app = create_app(settings, store=api_store or store, kinds=kinds)
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_config=None,  # structlog is configured; the access log is ours
                access_log=False,
                server_header=False,
                lifespan="on",
                http=http_protocol(settings.request_read_timeout, settings.max_header_bytes),
                # Events are small JSON: compressing each for each of a thousand streams
                # cost more CPU than sending it (docs/benchmarks.md).
                ws_per_message_deflate=False,
            )
        )
        worker = None
        notify = None
        if store is not None and worker_config is not None:
            served = worker_kinds(kinds)
            notify = install(served, store, settings)
            queues = with_notify_queues(worker_config.queues, settings)
            worker = Worker(store, replace(worker_config, queues=queues), kinds=served)
        async with dispatching(notify):
            await _serve(server, worker)
    finally:
        if api_store is not None:
            await api_store.close()
        if store is not None:
            await store.close()


async def _serve(server: uvicorn.Server, worker: Worker | None) -> None:
    loop = asyncio.get_running_loop()
    stops = 0

    def stop() -> None:
        """First call: graceful stop of both; second: skip the waiting."""
        nonlocal stops
        stops += 1
        if stops > 1:
            server.force_exit = True
        server.should_exit = True
        if worker is not None:
            worker.stop()  # its second call hands running jobs back at once

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal received; stopping", signal=sig.name)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks = [asyncio.create_task(server.serve(), name="conveyor-http")]
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run(), name="conveyor-worker"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if stops == 0:
            # One side ended by itself (the worker crashed, say): stop the other too.
            stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
