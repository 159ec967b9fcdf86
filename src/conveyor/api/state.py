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

from conveyor.config import Settings
from conveyor.engine.client import Client
from conveyor.engine.kinds import Registry
from conveyor.logs import get_logger
from conveyor.store.base import Store, StoreError
from conveyor.store.records import QueueStats

log = get_logger("api")

STATS_TTL_S = 1.0
"""How long queue statistics are reused: POSTs check backpressure against them, and the
statistics queries cost far more than a POST may."""

CONNECT_RETRY_MAX_S = 5.0


class StatsCache:
    """Queue statistics by queue name, refreshed at most every ``ttl`` seconds; one query
    at a time however many requests ask. A failed query caches nothing."""

    def __init__(self, ttl: float = STATS_TTL_S) -> None:
        self.ttl = ttl
        self._value: dict[str, QueueStats] | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    def _fresh(self) -> dict[str, QueueStats] | None:
        if self._value is not None and time.monotonic() - self._at < self.ttl:
            return self._value
        return None

    async def get(self, client: Client, *, fresh: bool = False) -> dict[str, QueueStats]:
        """The statistics, queried now if the cached ones are older than ``ttl`` or
        ``fresh`` is asked for (the status routes, which people read)."""
        value = None if fresh else self._fresh()
        if value is not None:
            return value
        async with self._lock:
            value = None if fresh else self._fresh()
            if value is None:
                value = {s.name: s for s in await client.queues()}
                self._value, self._at = value, time.monotonic()
            return value

    def invalidate(self) -> None:
        """Forget the statistics (after a pause or resume, so the next read is exact)."""
        self._value = None


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
        self._client = Client(store, kinds=self.kinds)

    async def connect(self, store: Store) -> None:
        """Open and migrate ``store``, retrying with backoff until it works, then serve
        with it. Meanwhile every route that needs the database answers 503."""
        delay = 0.1
        while (error := await open_store(store)) is not None:
            log.error("database unreachable; retrying", error=error, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_S)
        self.attach(store)
        log.info("database connected", dialect=store.dialect)

    def detach(self) -> None:
        """Stop serving with the store (at shutdown, before it is closed)."""
        self._client = None


async def open_store(store: Store) -> str | None:
    """Open and migrate ``store``; None when done, else why it failed."""
    try:
        await store.open()
        await store.migrate()
    except StoreError as exc:
        return str(exc)
    return None
