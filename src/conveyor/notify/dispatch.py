"""The dispatcher: turns the log's durable events into the jobs that deliver them
(webhooks, email), each event's once.

Every worker process runs one. They share one cursor in the store (``dispatch``): a pass
reads the events after it, asks each :class:`Planner` for its jobs, and moves the cursor
and enqueues those jobs in one transaction, guarded on where the cursor was. A pass that
finds the cursor moved by another process's dispatcher enqueues nothing and goes on from
where that one got to, so no event is delivered twice and none is skipped; the
processes that keep losing back off, so that one of them does the work while it lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Collection, Sequence
from typing import Protocol

from conveyor.engine.events import GAP_RETRY_S, FollowedStore, LogReader
from conveyor.logs import get_logger
from conveyor.store.base import EventsAppended, Notice, NoticesLost, StoreError
from conveyor.store.records import Event, NewJob

log = get_logger("notify.dispatch")

CURSOR = "dispatch"
PAGE = 500
"""Events planned in one pass."""
MIN_PASS_S = 0.1
"""A pass starts at most this often: the events committed meanwhile go in one pass (a pass
is four statements; at a worker's full rate, one per event commit cost two workers a
third of their throughput). Webhooks and mail wait this much longer at most."""
LOST_BACKOFF_S = (1.0, 3.0)
"""After losing the cursor to another process, wait this long (at random) before trying."""


class Planner(Protocol):
    """What turns events into delivery jobs (webhooks, email)."""

    async def jobs_for(self, events: Sequence[Event]) -> list[NewJob]:
        """The jobs that deliver ``events`` (durable ones, in id order)."""
        ...


class Dispatcher:
    """Runs passes over the log until cancelled (see the module's description)."""

    def __init__(
        self,
        store: FollowedStore,
        planners: Sequence[Planner],
        *,
        poll_interval: float = 2.0,
        page: int = PAGE,
        ignore_queues: Collection[str] = (),
    ) -> None:
        """``ignore_queues``: the events of jobs of these queues are delivered nowhere
        (the delivery jobs' own: a webhook about a webhook's delivery would call for
        another, without end)."""
        self._store = store
        self._planners = tuple(planners)
        self._ignored = frozenset(ignore_queues)
        self._poll_interval = poll_interval
        self._page = page
        self._wake = asyncio.Event()
        self.passes = 0
        """Passes that moved the cursor (for tests and logs)."""

    async def run(self) -> None:
        """Dispatch until cancelled; a failing pass is logged and tried again."""
        remove = self._store.add_listener(self._on_notice)
        try:
            while True:
                try:
                    await self._follow()
                except StoreError as exc:
                    log.warning("dispatching events failed; trying again", error=str(exc))
                    await asyncio.sleep(self._poll_interval)
                except Exception:
                    # A planner's bug must not stop every delivery for good.
                    log.exception("dispatching events failed; trying again")
                    await asyncio.sleep(self._poll_interval)
        finally:
            remove()

    def _on_notice(self, notice: Notice) -> None:
        if isinstance(notice, EventsAppended | NoticesLost):
            self._wake.set()

    async def _start(self) -> int:
        """Where the cursor is; a new one starts after the events already written (they
        were written before anyone could have subscribed to them)."""
        while (cursor := await self._store.event_cursor(CURSOR)) is None:
            start = await self._store.last_event_id()
            if await self._store.advance_event_cursor(CURSOR, None, start, []):
                return start
        return cursor

    async def _follow(self) -> None:
        cursor = await self._start()
        reader = LogReader(self._store, cursor, page=self._page)
        while True:
            events, more = await reader.read()
            if events:
                told = [e for e in events if e.queue not in self._ignored]
                jobs = [job for planner in self._planners for job in await planner.jobs_for(told)]
                if await self._store.advance_event_cursor(CURSOR, cursor, reader.cursor, jobs):
                    self.passes += 1
                    cursor = reader.cursor
                else:
                    await asyncio.sleep(random.uniform(*LOST_BACKOFF_S))
                    return
            if more:
                continue
            # A store that listens tells of every commit: an idle worker's dispatcher then
            # waits without a query (DESIGN: no query per second when idle).
            timeout = None if self._store.capabilities.listen else self._poll_interval
            if reader.held:
                timeout = GAP_RETRY_S[0] * 5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await asyncio.sleep(MIN_PASS_S)
