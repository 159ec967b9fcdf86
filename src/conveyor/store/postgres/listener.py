"""The PostgreSQL store's notices: sent on one channel at commit, heard on a LISTEN
connection that also holds the advisory lock keeping this store's offers live.

A notice is ``tag:value``: ``q:queue`` jobs may be available, ``c:id`` a running job was
asked to cancel, ``l:queue`` a queue's limit changed, ``h:[...]`` a job handed off to a
worker (sent by the enqueue itself, see enqueue.sql; decoded in rows.py), ``e`` events
were appended to the log, ``v:[...]`` live events (see announcer.py; decoded in rows.py).

A store's own notices come back to its LISTEN connection from the server pids of its
connections (:attr:`Database.own_backends`); it told its listeners already, so it drops
them, handoffs apart (no enqueue tells its own listeners of a handoff)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Callable, Iterable, Sequence

import asyncpg

from conveyor.logs import get_logger
from conveyor.store.base import (
    CancelRequested,
    EventsAppended,
    JobsAvailable,
    Notice,
    NoticesLost,
)
from conveyor.store.postgres.connection import CONNECT_ERRORS, Conn, Database
from conveyor.store.postgres.rows import decode_handoff, decode_live
from conveyor.store.sqlfile import load_statements

CHANNEL = "conveyor_v1"
"""The NOTIFY channel; versioned so that old and new releases can run side by side."""

APPENDED = "e"
"""The notice that events were appended to the log (it has no value)."""

LIVE = "v"
"""The tag of a live-events notice."""

LIVE_TAG = f"{LIVE}:"
"""What a live-events notice starts with."""

_SQL = load_statements(__package__, "$", "notices.sql")

log = get_logger("store.postgres")


async def notify_queues(conn: Conn, queues: Iterable[str]) -> None:
    """Tell every store's listeners that jobs may be available in ``queues``."""
    stmt = _SQL["notify_queues"]
    await conn.execute(stmt.sql, *stmt.args({"channel": CHANNEL, "queues": sorted(queues)}))


async def notify_cancel(conn: Conn, job_id: int) -> None:
    """Tell the worker running ``job_id`` to stop it."""
    stmt = _SQL["notify_cancel"]
    await conn.execute(stmt.sql, *stmt.args({"channel": CHANNEL, "job_id": job_id}))


async def notify_limit(conn: Conn, queue: str) -> None:
    """Tell every store to reload the queues that have a cluster-wide limit."""
    stmt = _SQL["notify_limit"]
    await conn.execute(stmt.sql, *stmt.args({"channel": CHANNEL, "queue": queue}))


async def notify_payloads(conn: Conn, payloads: Sequence[str]) -> None:
    """Send ``payloads`` (whole notices, tag included) on the channel, in one statement."""
    stmt = _SQL["notify_payloads"]
    await conn.execute(stmt.sql, *stmt.args({"channel": CHANNEL, "payloads": list(payloads)}))


class NoticeListener:
    """Holds a LISTEN connection while started; when it drops, reconnects with backoff and
    publishes :class:`NoticesLost`, since anything may have happened meanwhile. Each time
    it is listening (again) it publishes :class:`EventsAppended` too: events committed
    while it was not were told of to no one here."""

    def __init__(
        self,
        db: Database,
        publish: Callable[[Notice], None],
        limits_changed: Callable[[], None],
    ) -> None:
        self._db = db
        self._publish = publish
        self._limits_changed = limits_changed
        self._task: asyncio.Task[None] | None = None
        self.offer_key: int | None = None
        """The advisory lock key the LISTEN connection holds, while it is up: offers for
        handoff carry it (a new one per connection, so offers made before a drop are dead
        at once, and a reconnect never waits for a lingering old session's lock)."""

    def start(self) -> None:
        """Listen from now on (on the running loop); a second call does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="conveyor-postgres-listen"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_notification(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        tag, _, value = str(payload).partition(":")
        if tag == "h":
            # Never this store's echo: no enqueue tells its own listeners of a handoff.
            self._publish(decode_handoff(value))
            return
        if pid in self._db.own_backends:
            return
        if tag == "q":
            self._publish(JobsAvailable(frozenset({value})))
        elif tag == "c":
            self._publish(CancelRequested(frozenset({int(value)})))
        elif tag == "l":
            self._limits_changed()
        elif tag == APPENDED:
            self._publish(EventsAppended())
        elif tag == LIVE:
            self._publish(decode_live(value))

    async def _listen_forever(self) -> None:
        delay = 0.1
        reconnected = False
        while True:
            lost = asyncio.Event()
            on_lost = functools.partial(_set_event, lost)
            try:
                conn = await self._db.connect_plain()
            except CONNECT_ERRORS as exc:
                log.warning("LISTEN connection failed; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            try:
                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, self._on_notification)
                # After LISTEN, so that every handoff to an offer with this key is heard.
                key = secrets.randbits(63)
                hold = _SQL["hold_offer_key"]
                await conn.execute(hold.sql, *hold.args({"key": key}))
                self.offer_key = key
                delay = 0.1
                self._publish(JobsAvailable(None))
                self._publish(EventsAppended())
                if reconnected:
                    self._publish(NoticesLost())
                reconnected = True
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed; retrying", error=str(exc))
            finally:
                self.offer_key = None
                if not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)


def _set_event(event: asyncio.Event, _conn: object) -> None:
    event.set()
