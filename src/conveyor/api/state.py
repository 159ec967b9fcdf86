"""The API's shared state: settings, kinds, the engine client once the database answers,
and a short-lived cache of queue statistics.

Nothing here remembers that the database failed: a store call that fails raises
:class:`~conveyor.store.base.StoreError` for that request only (503), and the next request
tries again. The only state is whether the store has been opened at all, which
:meth:`ApiState.connect` keeps retrying until it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from conveyor.config import Settings
from conveyor.engine.client import Client
from conveyor.engine.kinds import Registry
from conveyor.logs import get_logger
from conveyor.store.base import JobQueue, Store, StoreError
from conveyor.store.records import QueueStats

log = get_logger("api")

STATS_TTL_S = 1.0
"""How old the statistics on the request path may grow before a refresh starts: POSTs
check backpressure against them and estimate waits with them."""

CONNECT_RETRY_MAX_S = 5.0

StatsByQueue = dict[str, QueueStats]
Prepare = Callable[[], Awaitable[None]]
"""What must be done on an open store before the app serves with it."""


class StatsCache:
    """Queue statistics by queue name, for the request path.

    :meth:`get` never waits for the database once it has a value: a value older than
    ``ttl`` is still served, and one refresh starts in the background. Only the first
    reads, with nothing to serve yet, wait (for one shared query). The cached statistics
    are read with ``finished=False``: admission and the wait estimate need the active
    jobs and recent run times, not the counts of finished jobs. A refresh that fails
    keeps the previous value and is tried again ``ttl`` later; the failure is logged.
    """

    def __init__(self, ttl: float = STATS_TTL_S) -> None:
        self.ttl = ttl
        self._value: StatsByQueue | None = None
        self._tried_at = float("-inf")
        self._task: asyncio.Task[StatsByQueue] | None = None

    async def get(self, client: Client, *, fresh: bool = False) -> StatsByQueue:
        """The cached statistics; with ``fresh``, every statistic read now, the counts of
        finished jobs included (the status routes, which people read)."""
        if fresh:
            return self._keep({s.name: s for s in await client.queues()})
        value = self._value
        if value is None:
            # Shielded: a reader that goes away must not cancel the others' query.
            return await asyncio.shield(self._refresh(client))
        if time.monotonic() - self._tried_at >= self.ttl:
            self._refresh(client)
        return value

    async def current(self, client: Client) -> StatsByQueue:
        """The statistics the cache holds, read now (health checks, which must notice a
        database that stopped answering)."""
        return self._keep({s.name: s for s in await client.store.queue_stats(finished=False)})

    def invalidate(self) -> None:
        """Refresh at the next read (after a pause or resume); until the refresh is done
        reads get the previous value."""
        self._tried_at = float("-inf")

    def stop(self) -> None:
        """Cancel a refresh under way (at shutdown, before the store closes)."""
        if self._task is not None:
            self._task.cancel()

    def _keep(self, value: StatsByQueue) -> StatsByQueue:
        self._value = value
        return value

    def _refresh(self, client: Client) -> asyncio.Task[StatsByQueue]:
        if self._task is None:
            self._tried_at = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(
                self._load(client), name="conveyor-stats-refresh"
            )
            self._task.add_done_callback(self._done)
        return self._task

    async def _load(self, client: Client) -> StatsByQueue:
        stats = await client.store.queue_stats(finished=False)
        return self._keep({s.name: s for s in stats})

    def _done(self, task: asyncio.Task[StatsByQueue]) -> None:
        self._task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("queue statistics refresh failed", error=str(exc))


class ApiState:
    """Everything the routes share, kept in ``app.state.conveyor``."""

    def __init__(self, settings: Settings, kinds: Registry) -> None:
        self.settings = settings
        self.kinds = kinds
        self.stats = StatsCache()
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The engine client; raises :class:`StoreError` (503) until the store is open."""
        if self._client is None:
            raise StoreError("the database has not been reached yet")
        return self._client

    def attach(self, store: Store) -> None:
        """Serve with ``store``, already open and migrated."""
        self._client = Client(
            store, kinds=self.kinds, event_poll_interval=self.settings.event_poll_interval
        )

    async def connect(self, store: Store, prepare: Prepare | None = None) -> None:
        """Open and migrate ``store`` and run ``prepare`` (the accounts service's start),
        retrying with backoff until it all works, then serve with it. Meanwhile every
        route that needs the database answers 503."""
        delay = 0.1
        while (error := await open_store(store, prepare)) is not None:
            log.error("database unreachable; retrying", error=error, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_S)
        self.attach(store)
        log.info("database connected", dialect=store.dialect)

    async def detach(self) -> None:
        """Stop serving with the store (at shutdown, before it is closed): the event
        streams end."""
        client, self._client = self._client, None
        self.stats.stop()
        if client is not None:
            await client.close()


async def open_store(store: JobQueue, prepare: Prepare | None = None) -> str | None:
    """Open and migrate ``store``, then run ``prepare``; None when done, else why it
    failed."""
    try:
        await store.open()
        await store.migrate()
        if prepare is not None:
            await prepare()
    except StoreError as exc:
        return str(exc)
    return None
