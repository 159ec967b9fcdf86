"""Following the event log: ``Client.wait`` and ``Client.events``, woken by notices, the
follower's replay-then-live with no gap and no duplicate, a slow reader's overflow, and
the reader holding at a gap until the transaction that holds the missing id ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

import conveyor
from conveyor.engine.events import EventFollower, EventMatch, EventStream, LogReader
from conveyor.store.base import Store
from conveyor.store.records import EventType


@pytest.fixture
def kinds() -> conveyor.Registry:
    registry = conveyor.Registry()

    @conveyor.job("ev.echo", registry=registry)
    async def echo(ctx: conveyor.JobContext, payload: Any) -> Any:
        ctx.progress(0.5, "half")
        return {"echo": payload}

    @conveyor.job("ev.fail", registry=registry, max_attempts=1)
    async def fail(ctx: conveyor.JobContext, payload: Any) -> None:
        raise ValueError("it broke")

    @conveyor.job("ev.slow", registry=registry)
    async def slow(ctx: conveyor.JobContext, payload: Any) -> None:
        await asyncio.sleep(60)

    return registry


class Calls:
    """Counts the calls a store receives (the store still does them all)."""

    def __init__(self, store: Store, names: tuple[str, ...]) -> None:
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            method = getattr(store, name)
            setattr(store, name, self._counting(name, method))

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return await method(*args, **kwargs)

        return call

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def test_wait_returns_the_result(client: conveyor.Client, workers: Any) -> None:
    await workers.start_idle()
    job = await client.enqueue("ev.echo", {"n": 1})
    assert await client.wait(job.id, timeout=10) == {"echo": {"n": 1}}
    # A job already finished answers at once.
    assert await client.wait(job.id, timeout=1) == {"echo": {"n": 1}}


async def test_wait_raises_the_job_s_error_or_its_cancel(
    client: conveyor.Client, workers: Any
) -> None:
    await workers.start_idle()
    failing = await client.enqueue("ev.fail", {})
    with pytest.raises(conveyor.JobFailed, match="ValueError: it broke") as failed:
        await client.wait(failing.id, timeout=10)
    assert failed.value.error_type == "ValueError"
    assert failed.value.job.state is conveyor.JobState.FAILED
    slow = await client.enqueue("ev.slow", {})
    waiting = asyncio.create_task(client.wait(slow.id, timeout=10))
    await asyncio.sleep(0.3)
    await client.cancel(slow.id)
    with pytest.raises(conveyor.JobCancelled):
        await waiting
    with pytest.raises(conveyor.JobNotFound):
        await client.wait(10**12, timeout=1)


async def test_wait_times_out_and_the_job_goes_on(client: conveyor.Client) -> None:
    job = await client.enqueue("ev.echo", {})
    with pytest.raises(TimeoutError):
        await client.wait(job.id, timeout=0.2)
    assert (await client.get(job.id)).state is conveyor.JobState.QUEUED


@pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)
async def test_wait_is_woken_by_the_event_and_queries_nothing_meanwhile(
    store: Store, peer_store: Store, kinds: conveyor.Registry, workers: Any
) -> None:
    client = conveyor.Client(store, kinds=kinds)
    job = await client.enqueue("ev.echo", {})
    calls = Calls(store, ("read_events", "get_job", "last_event_id"))
    waiting = asyncio.create_task(client.wait(job.id, timeout=20))
    await asyncio.sleep(0.3)
    before = calls.total
    await asyncio.sleep(1.5)
    assert calls.total == before, f"queries while waiting: {calls.counts}"
    # Another process's worker runs it.
    await workers.start_idle(store=peer_store)
    began = time.monotonic()
    assert await waiting == {"echo": {}}
    assert time.monotonic() - began < 5


async def test_events_replays_then_goes_on_live_with_no_gap_and_no_duplicate(
    client: conveyor.Client, workers: Any
) -> None:
    first = await client.enqueue("ev.echo", {"i": 0})
    await workers.burst()
    seen: list[conveyor.Event] = []

    async def read() -> None:
        async for event in client.events(since=0):
            seen.append(event)
            durable = [e for e in seen if e.id is not None]
            if len(durable) == 4:
                return

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    second = await client.enqueue("ev.echo", {"i": 1})
    await workers.burst()
    await asyncio.wait_for(reading, 10)
    durable = [e for e in seen if e.id is not None]
    assert [(e.job_id, e.type) for e in durable] == [
        (first.id, EventType.QUEUED),
        (first.id, EventType.COMPLETED),
        (second.id, EventType.QUEUED),
        (second.id, EventType.COMPLETED),
    ]
    live = {e.type for e in seen if e.id is None}
    assert live <= {EventType.STARTED, EventType.PROGRESS}


async def test_live_events_reach_a_follower_in_the_worker_s_process(
    client: conveyor.Client, workers: Any
) -> None:
    await workers.start_idle()
    seen: list[conveyor.Event] = []
    ready = asyncio.Event()

    async def read() -> None:
        stream = client.events(types=[EventType.STARTED, EventType.PROGRESS, "job.completed"])
        ready.set()
        async for event in stream:
            seen.append(event)
            if event.type is EventType.COMPLETED:
                return

    reading = asyncio.create_task(read())
    await ready.wait()
    await asyncio.sleep(0.3)
    job = await client.enqueue("ev.echo", {})
    await asyncio.wait_for(reading, 10)
    types = [e.type for e in seen if e.job_id == job.id]
    assert types[0] is EventType.STARTED
    assert EventType.PROGRESS in types
    progress = next(e for e in seen if e.type is EventType.PROGRESS)
    assert progress.body == {"fraction": 0.5, "message": "half"}


async def test_a_reader_that_falls_behind_overflows_with_the_id_to_resume_from(
    store: Store, client: conveyor.Client
) -> None:
    follower = EventFollower(store)
    try:
        async with EventStream(follower, store, EventMatch(), buffer=5) as stream:
            first = await client.enqueue("ev.echo", {})
            event = await asyncio.wait_for(stream.next(None), 5)
            assert event is not None
            assert event.job_id == first.id
            for _ in range(3):
                await client.enqueue_many([client.prepare("ev.echo", {}) for _ in range(4)])
                await asyncio.sleep(0.2)
            got: list[Any] = []
            with pytest.raises(conveyor.StreamOverflow) as overflow:
                await drain(stream, got)
        assert overflow.value.resume_from == (got[-1].id if got else event.id)
        # Resuming from there gives the rest.
        rest = EventStream(follower, store, EventMatch(), since=overflow.value.resume_from)
        async with rest:
            ids = []
            while len(ids) < 13 - 1 - len(got):
                item = await asyncio.wait_for(rest.next(None), 5)
                assert item is not None
                ids.append(item.id)
        assert ids == sorted(set(ids))
    finally:
        await follower.close()


async def drain(stream: EventStream, into: list[Any]) -> None:
    while True:
        into.append(await asyncio.wait_for(stream.next(None), 5))


@pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)
async def test_the_reader_holds_at_a_gap_until_its_transaction_ends(
    store: Store, db: asyncpg.Connection, client: conveyor.Client
) -> None:
    start = await store.last_event_id()
    reader = LogReader(store, start)
    tx = db.transaction()
    await tx.start()
    # An enqueue that takes an event id and does not commit yet...
    await db.execute(
        "INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt) "
        "VALUES ('default', 'job.queued', 999999, 'ev.echo', 'default', 0)"
    )
    # ...while a later one commits.
    later = await client.enqueue("ev.echo", {})
    events, _ = await reader.read()
    assert events == []
    events, _ = await reader.read()
    assert events == [], "the gap was passed while its transaction still ran"
    await tx.commit()
    events, _ = await reader.read()
    assert [e.job_id for e in events] == [999999, later.id]


@pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)
async def test_the_reader_passes_a_gap_left_by_a_rollback(
    store: Store, db: asyncpg.Connection, client: conveyor.Client
) -> None:
    reader = LogReader(store, await store.last_event_id())
    tx = db.transaction()
    await tx.start()
    await db.execute(
        "INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt) "
        "VALUES ('default', 'job.queued', 999999, 'ev.echo', 'default', 0)"
    )
    later = await client.enqueue("ev.echo", {})
    assert (await reader.read())[0] == []
    await tx.rollback()
    # Passed once every transaction running when the gap was seen has ended: at once on a
    # quiet server; the server's other sessions (other databases') may delay it.
    deadline = time.monotonic() + 15
    events: list[conveyor.Event] = []
    while not events and time.monotonic() < deadline:
        events, _ = await reader.read()
        await asyncio.sleep(0.01)
    assert [e.job_id for e in events] == [later.id]
