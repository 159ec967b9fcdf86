"""Following the event log: every durable event once, in id order, with no gap, and the
live ones as they come.

Ids are taken when an event is inserted and transactions commit in another order, so a
reader may see id 9 before 8 (8's transaction still running) or never see 8 (rolled
back). :class:`LogReader` delivers up to the first gap and holds there until the gap is
final (:class:`~conveyor.store.records.EventPage`'s horizon: every transaction that was
running when the gap was first seen has ended), or :data:`MAX_GAP_WAIT_S` passed (a
transaction held open that long is not one of Conveyor's). :class:`EventFollower` runs a
reader for a process: woken by the store's notices, it hands each event to the
subscribers whose filter it matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from conveyor.logs import get_logger
from conveyor.store.base import (
    EventLog,
    EventsAppended,
    JobQueue,
    LiveEvents,
    Notice,
    NoticesLost,
    StoreError,
)
from conveyor.store.records import Event, EventFilter, EventType

log = get_logger("events")

PAGE = 1000
"""Events read at once."""
FAN_OUT_CHUNK = 100
"""Events handed to the subscribers before the follower lets them run: a page of a bulk
enqueue must not fill the buffer of a reader that keeps up."""
MAX_GAP_WAIT_S = 10.0
"""How long a gap in the ids is waited for at most, whatever the horizon says."""
GAP_RETRY_S = (0.002, 0.2)
"""A reader held at a gap reads again after the first delay, doubling up to the second."""


class LogReader:
    """Reads the log forward from ``after_id``; :meth:`read` returns the events that can
    be delivered now, never one past a gap that may still fill."""

    def __init__(self, store: EventLog, after_id: int, *, page: int = PAGE) -> None:
        self._store = store
        self.cursor = after_id
        """The id of the last event returned: every id up to it was delivered or is final."""
        self._page = page
        self._gaps: dict[int, tuple[float, int]] = {}
        """Gaps seen, by their first missing id: (when first seen, the horizon's next
        transaction id then)."""

    @property
    def held(self) -> bool:
        """Whether the last read stopped at a gap that may still fill (read again soon)."""
        return bool(self._gaps)

    async def read(self) -> tuple[list[Event], bool]:
        """The next events, in order; and whether more are waiting already (a full page)."""
        page = await self._store.read_events(EventFilter(after_id=self.cursor, limit=self._page))
        out: list[Event] = []
        expected = self.cursor + 1
        now = time.monotonic()
        for event in page.events:
            assert event.id is not None
            if event.id != expected and not self._gap_final(expected, page.horizon, now):
                break
            out.append(event)
            expected = event.id + 1
        if out:
            last = out[-1].id
            assert last is not None
            self.cursor = last
            self._gaps = {start: seen for start, seen in self._gaps.items() if start > last}
        return out, len(page.events) == self._page and len(out) == len(page.events)

    def _gap_final(self, start: int, horizon: tuple[int, int], now: float) -> bool:
        seen = self._gaps.get(start)
        if seen is None:
            self._gaps[start] = (now, horizon[1])
            return False
        first_seen, next_then = seen
        if horizon[0] >= next_then or now - first_seen >= MAX_GAP_WAIT_S:
            if now - first_seen >= MAX_GAP_WAIT_S:
                log.warning("event ids skipped after waiting for them", first_missing=start)
            del self._gaps[start]
            return True
        return False


@dataclass(frozen=True, slots=True)
class EventMatch:
    """Which events a subscriber wants; empty fields match everything."""

    tenant_id: str | None = None
    """None: every tenant's (operators, the dispatcher)."""
    job_id: int | None = None
    kinds: frozenset[str] = frozenset()
    types: frozenset[EventType] = frozenset()

    def __call__(self, event: Event) -> bool:
        return (
            (self.tenant_id is None or event.tenant_id == self.tenant_id)
            and (self.job_id is None or event.job_id == self.job_id)
            and (not self.kinds or event.kind in self.kinds)
            and (not self.types or event.type in self.types)
        )

    def page_filter(self, after_id: int, through_id: int | None, limit: int) -> EventFilter:
        """The store's filter for replaying what this matches."""
        return EventFilter(
            after_id=after_id,
            through_id=through_id,
            tenant_id=self.tenant_id,
            job_id=self.job_id,
            kinds=tuple(sorted(self.kinds)),
            types=tuple(sorted(self.types)),
            limit=limit,
        )


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber of an :class:`EventFollower`: ``deliver`` is called on the event
    loop with each matching event, durable ones in id order."""

    match: EventMatch
    deliver: Callable[[Event], None]
    ended: Callable[[], None] | None = None
    """Called if the follower closes while subscribed (the process shuts down)."""
    since: int = field(default=0)
    """The follower's cursor when it subscribed: every durable event it is given has a
    larger id; those up to it are the subscriber's to read from the store."""


class FollowedStore(JobQueue, EventLog, Protocol):
    """What a follower reads and listens to."""


class EventFollower:
    """A process's one reader of the log: started by its first subscriber, stopped with
    its last, so a process nobody listens in pays nothing.

    Reads are woken by the store's notices (:class:`EventsAppended`; after
    :class:`NoticesLost`, since anything may have been missed) and, for a store that
    cannot listen, every ``poll_interval`` seconds. A read that fails (the database is
    away) is tried again after ``poll_interval``."""

    def __init__(self, store: FollowedStore, *, poll_interval: float = 2.0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._remove_listener: Callable[[], None] | None = None
        self._reader: LogReader | None = None
        self._starting = asyncio.Lock()

    @property
    def cursor(self) -> int:
        """The id of the last durable event delivered (0 before the first read)."""
        return self._reader.cursor if self._reader else 0

    async def subscribe(
        self,
        match: EventMatch,
        deliver: Callable[[Event], None],
        ended: Callable[[], None] | None = None,
    ) -> Subscription:
        """Start delivering what ``match`` matches to ``deliver``; the subscription's
        ``since`` is where it starts (see :class:`Subscription`)."""
        await self._ensure_started()
        sub = Subscription(match, deliver, ended, self.cursor)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the last one out stops the follower."""
        self._subs.discard(sub)
        if not self._subs and self._task is not None:
            self._stop()

    async def close(self) -> None:
        """Stop, whatever subscribes; the subscribers are told (``ended``)."""
        subs, self._subs = self._subs, set()
        for sub in subs:
            if sub.ended is not None:
                sub.ended()
        task = self._stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stop(self) -> asyncio.Task[None] | None:
        task, self._task = self._task, None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if task is not None:
            task.cancel()
        self._reader = None
        return task

    async def _ensure_started(self) -> None:
        async with self._starting:
            if self._task is not None:
                return
            # Listening before the start is read, and the start read before the first
            # subscriber is told its cursor: nothing committed after subscribe() returns
            # can be missed.
            self._remove_listener = self._store.add_listener(self._on_notice)
            try:
                self._reader = LogReader(self._store, await self._store.last_event_id())
            except BaseException:
                self._remove_listener()
                self._remove_listener = None
                raise
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name="conveyor-events"
            )

    def _on_notice(self, notice: Notice) -> None:
        if isinstance(notice, LiveEvents):
            self._fan_out(notice.events)
        elif isinstance(notice, EventsAppended | NoticesLost):
            self._wake.set()

    def _fan_out(self, events: Iterable[Event]) -> None:
        subs = tuple(self._subs)
        for event in events:
            for sub in subs:
                if sub.match(event):
                    sub.deliver(event)

    async def _follow(self) -> None:
        reader = self._reader
        assert reader is not None
        listens = self._store.capabilities.listen
        delay = GAP_RETRY_S[0]
        while True:
            timeout = None if listens else self._poll_interval
            if reader.held:
                timeout = delay
                delay = min(delay * 2, GAP_RETRY_S[1])
            else:
                delay = GAP_RETRY_S[0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                more = True
                while more:
                    events, more = await reader.read()
                    for start in range(0, len(events), FAN_OUT_CHUNK):
                        if start:
                            await asyncio.sleep(0)
                        self._fan_out(events[start : start + FAN_OUT_CHUNK])
            except StoreError as exc:
                log.warning("reading the event log failed; trying again", error=str(exc))
                await asyncio.sleep(self._poll_interval)
                self._wake.set()


class StreamOverflow(Exception):
    """The subscriber read more slowly than events came and its buffer filled: the stream
    ended. ``resume_from`` is the id of the last durable event it was given: a new
    stream with ``since=resume_from`` goes on with no gap and no duplicate."""

    def __init__(self, resume_from: int | None) -> None:
        super().__init__(
            f"the event stream fell behind and was closed; resume after id {resume_from}"
        )
        self.resume_from = resume_from


class EventStream:
    """One subscriber's events as an async iterator: with ``since``, the durable events
    after it read from the log first, then what the follower delivers (durable and live)
    from then on, with no gap and no duplicate between the two.

    At most ``buffer`` events wait for the reader; one more ends the stream with
    :class:`StreamOverflow` (never an unbounded buffer). Use as ``async with``: leaving
    unsubscribes."""

    def __init__(
        self,
        follower: EventFollower,
        store: EventLog,
        match: EventMatch,
        *,
        since: int | None = None,
        buffer: int = 1000,
        page: int = 500,
    ) -> None:
        self._follower = follower
        self._store = store
        self._match = match
        self._since = since
        self._buffer = buffer
        self._page = page
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._replay: list[Event] = []
        self._replay_to = 0
        self.last_id: int | None = since
        """The id of the last durable event given to the reader (``since`` before)."""
        self._overflowed = False
        self._ended_by: Exception | None = None

    async def __aenter__(self) -> EventStream:
        self._sub = await self._follower.subscribe(self._match, self._push, self._ended)
        self._replay_to = self._sub.since
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe; the reader's next wait ends the iteration."""
        if self._sub is not None:
            self._follower.unsubscribe(self._sub)
            self._sub = None
            self._queue.put_nowait(None)

    def _ended(self) -> None:
        self._sub = None
        self._queue.put_nowait(None)

    def _push(self, event: Event) -> None:
        if self._overflowed:
            return
        if self._queue.qsize() >= self._buffer:
            self._overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        event = await self.next(None)
        assert event is not None
        return event

    async def next(self, timeout: float | None) -> Event | None:
        """The next event; None when none came within ``timeout`` seconds (None: wait).
        Raises :class:`StreamOverflow`, or ``StopAsyncIteration`` once closed."""
        while True:
            event = await self._next_replayed() if self._replaying else None
            if event is None:
                if self._ended_by is not None:
                    raise self._ended_by
                if not self._queue.empty():
                    event = self._queue.get_nowait()
                else:
                    # asyncio.timeout, not wait_for: wait_for makes a task of every wait, and
                    # a thousand streams wait for every event.
                    try:
                        async with asyncio.timeout(timeout):
                            event = await self._queue.get()
                    except TimeoutError:
                        return None
                if event is None:
                    self._ended_by = (
                        StreamOverflow(self.last_id) if self._overflowed else StopAsyncIteration()
                    )
                    raise self._ended_by
            if event.id is not None:
                if self.last_id is not None and event.id <= self.last_id:
                    continue
                self.last_id = event.id
            return event

    @property
    def _replaying(self) -> bool:
        return bool(self._replay) or (self._since is not None and self._since < self._replay_to)

    async def _next_replayed(self) -> Event | None:
        if not self._replay and self._since is not None and self._since < self._replay_to:
            page = await self._store.read_events(
                self._match.page_filter(self._since, self._replay_to, self._page)
            )
            self._replay = list(page.events)
            if len(self._replay) < self._page:
                self._since = self._replay_to
            elif self._replay:
                last = self._replay[-1].id
                assert last is not None
                self._since = last
            self._replay.reverse()
        return self._replay.pop() if self._replay else None
