"""The PostgreSQL store's notices of events sent from Python after the commit that wrote
them: ``e`` (events were appended) for the changes whose statement sends no NOTIFY of
its own (the exchange, the rescue, cancel, retry), and ``v:`` live events.

The exchange must not NOTIFY in its own transaction: PostgreSQL takes one lock for every
notifying commit of the cluster and holds it until the commit is flushed, which would
serialise every worker's commit. Here the notices go after the commit, coalesced: at most
one NOTIFY statement in flight per store, and one more after it for whatever came
meanwhile, in a transaction that writes nothing and does not wait for its commit record
to be flushed. This process's listeners are told at once, without that round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

import asyncpg

from conveyor.logs import get_logger
from conveyor.store.base import EventsAppended, LiveEvents, Notice, StoreError
from conveyor.store.postgres.connection import Database
from conveyor.store.postgres.listener import APPENDED, LIVE_TAG, notify_payloads
from conveyor.store.postgres.rows import encode_live_event
from conveyor.store.records import Event

MAX_PAYLOAD = 7900
"""Bytes of a notice's payload at most: PostgreSQL refuses 8000 and more."""

log = get_logger("store.postgres")


class Announcer:
    """Tells every store's listeners of events: this store's at once, the others' by
    NOTIFY once the current one (if any) is sent."""

    def __init__(self, db: Database, publish: Callable[[Notice], None]) -> None:
        self._db = db
        self._publish = publish
        self._appended = False
        self._live: list[bytes] = []
        self._sending: asyncio.Task[None] | None = None

    def events_appended(self) -> None:
        """Events were committed (call after the commit)."""
        self._publish(EventsAppended())
        self._appended = True
        self._send_soon()

    def live(self, events: Sequence[Event]) -> None:
        """Live events to tell of (never stored). One too large for a notice reaches this
        process's listeners only."""
        if not events:
            return
        self._publish(LiveEvents(tuple(events)))
        for event in events:
            encoded = encode_live_event(event)
            if len(encoded) + len(LIVE_TAG) + 2 > MAX_PAYLOAD:
                log.warning(
                    "live event too large for a notice; other processes will not hear it",
                    job_id=event.job_id,
                    type=event.type.value,
                    size=len(encoded),
                )
                continue
            self._live.append(encoded)
        self._send_soon()

    async def close(self) -> None:
        """Wait for the notices told of so far to be sent."""
        if self._sending is not None:
            await asyncio.shield(self._sending)

    def _send_soon(self) -> None:
        if self._sending is None and (self._appended or self._live):
            self._sending = asyncio.get_running_loop().create_task(
                self._send(), name="conveyor-postgres-announce"
            )

    async def _send(self) -> None:
        try:
            while self._appended or self._live:
                batch = live_payloads(self._live)
                if self._appended:
                    batch.append(APPENDED)
                self._appended = False
                self._live = []
                try:
                    await self._send_payloads(batch)
                except (StoreError, asyncpg.PostgresError) as exc:
                    # Other processes find the events at their next poll of the log; live
                    # events are lost to them, as they are to a store not listening.
                    log.warning("event notice not sent", error=str(exc))
        finally:
            self._sending = None

    async def _send_payloads(self, payloads: list[str]) -> None:
        await self._db.run(lambda conn: notify_payloads(conn, payloads))


def live_payloads(encoded: Iterable[bytes]) -> list[str]:
    """``v:`` payloads carrying the encoded live events (each a JSON array, see
    :func:`~conveyor.store.postgres.rows.encode_live_event`) in order, as few as fit
    under :data:`MAX_PAYLOAD` bytes each: ``v:[event,event,...]``."""
    payloads: list[str] = []
    batch: list[bytes] = []
    size = len(LIVE_TAG) + 2  # the tag and the brackets
    for event in encoded:
        if batch and size + len(event) + 1 > MAX_PAYLOAD:
            payloads.append(_payload(batch))
            batch, size = [], len(LIVE_TAG) + 2
        batch.append(event)
        size += len(event) + 1
    if batch:
        payloads.append(_payload(batch))
    return payloads


def _payload(batch: list[bytes]) -> str:
    return LIVE_TAG + "[" + b",".join(batch).decode() + "]"
