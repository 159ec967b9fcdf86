"""Periodic (cron) jobs: when ticks fall, in UTC and in other zones; how ``periodic``
registers a kind and its schedule; and schedulers on several store instances enqueueing a
tick exactly once.

Scheduler tests use :class:`AtTicks`, a schedule whose ticks are given instants, so a tick
falls a fraction of a second after the test starts instead of at the next minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import conveyor
from conveyor.engine.periodic import Schedule, Scheduler, add_schedule, schedules
from conveyor.store.base import Store
from conveyor.store.records import Enqueued, NewJob

PARIS = ZoneInfo("Europe/Paris")

Eventually = Callable[..., Awaitable[Any]]


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC).timestamp()


def paris(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


@dataclass(frozen=True, slots=True)
class AtTicks(Schedule):
    """A schedule that ticks at the given instants, then not for an hour."""

    ticks: tuple[float, ...] = ()

    def next_tick(self, after: float) -> float:
        return next((t for t in sorted(self.ticks) if t > after), after + 3600.0)


def iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat()


# -- Schedule.next_tick ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("* * * * *", utc(2026, 1, 1, 12, 0, 30), utc(2026, 1, 1, 12, 1)),
        # Strictly after: a time on a tick gets the next one.
        ("* * * * *", utc(2026, 1, 1, 12, 0), utc(2026, 1, 1, 12, 1)),
        ("*/5 * * * *", utc(2026, 1, 1, 12, 3, 20), utc(2026, 1, 1, 12, 5)),
        ("*/5 * * * *", utc(2026, 1, 1, 12, 5), utc(2026, 1, 1, 12, 10)),
        ("*/5 * * * *", utc(2026, 1, 1, 12, 4, 59, 999000), utc(2026, 1, 1, 12, 5)),
        # Across an hour, a day, a month and a year.
        ("15 * * * *", utc(2026, 1, 1, 12, 20), utc(2026, 1, 1, 13, 15)),
        ("0 9 * * *", utc(2026, 1, 1, 9, 0, 1), utc(2026, 1, 2, 9, 0)),
        ("0 0 1 * *", utc(2026, 1, 31, 23, 59), utc(2026, 2, 1, 0, 0)),
        ("30 23 31 12 *", utc(2026, 12, 31, 23, 30), utc(2027, 12, 31, 23, 30)),
        # Weekdays only: after Friday 2026-11-20 09:00 comes Monday 2026-11-23.
        ("0 9 * * 1-5", utc(2026, 11, 20, 9, 0), utc(2026, 11, 23, 9, 0)),
        # A sixth field is the second.
        ("* * * * * */10", utc(2026, 1, 1, 12, 0, 3), utc(2026, 1, 1, 12, 0, 10)),
        ("* * * * * */10", utc(2026, 1, 1, 12, 0, 50), utc(2026, 1, 1, 12, 1)),
        ("30 9 * * * 15", utc(2026, 1, 1, 9, 30, 15), utc(2026, 1, 2, 9, 30, 15)),
    ],
)
def test_next_tick_in_utc(cron: str, after: float, expected: float) -> None:
    assert Schedule("t.cron", cron).next_tick(after) == expected


@pytest.mark.parametrize(
    ("after", "expected", "expected_utc"),
    [
        # Winter (UTC+1): 09:00 in Paris is 08:00 UTC, the next day once 09:00 has passed.
        (paris(2026, 1, 15, 10, 0), paris(2026, 1, 16, 9, 0), utc(2026, 1, 16, 8, 0)),
        (paris(2026, 1, 15, 8, 59), paris(2026, 1, 15, 9, 0), utc(2026, 1, 15, 8, 0)),
        # Summer time starts on 2026-03-29: 09:00 is then 07:00 UTC.
        (paris(2026, 3, 28, 10, 0), paris(2026, 3, 29, 9, 0), utc(2026, 3, 29, 7, 0)),
        # And ends on 2026-10-25: 09:00 is 08:00 UTC again.
        (paris(2026, 10, 24, 9, 0), paris(2026, 10, 25, 9, 0), utc(2026, 10, 25, 8, 0)),
    ],
)
def test_next_tick_in_another_time_zone(after: float, expected: float, expected_utc: float) -> None:
    schedule = Schedule("t.cron", "0 9 * * *", timezone="Europe/Paris")
    tick = schedule.next_tick(after)
    assert tick == expected == expected_utc
    assert datetime.fromtimestamp(tick, PARIS).hour == 9
    # The same expression in UTC falls elsewhere.
    assert Schedule("t.cron", "0 9 * * *").next_tick(after) != tick


def test_daily_ticks_in_paris_follow_local_time_across_the_clock_change() -> None:
    schedule = Schedule("t.cron", "0 9 * * *", timezone="Europe/Paris")
    ticks = []
    tick = utc(2026, 3, 27, 0, 0)
    for _ in range(4):
        tick = schedule.next_tick(tick)
        ticks.append(tick)
    assert ticks == [
        utc(2026, 3, 27, 8, 0),
        utc(2026, 3, 28, 8, 0),
        utc(2026, 3, 29, 7, 0),
        utc(2026, 3, 30, 7, 0),
    ]


# -- periodic() ----------------------------------------------------------------------------
def test_periodic_registers_the_kind_and_its_schedule(kinds: conveyor.Registry) -> None:
    @conveyor.periodic(
        "*/5 * * * *",
        "t.refresh",
        payload={"full": True},
        timezone="Europe/Paris",
        queue="reports",
        priority=2,
        max_attempts=1,
        timeout=60,
        registry=kinds,
    )
    async def refresh(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    @conveyor.periodic("0 * * * *", "t.hourly", registry=kinds)
    def hourly(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    kind = kinds.get("t.refresh")
    assert kind.handler is refresh
    assert (kind.queue, kind.priority, kind.max_attempts, kind.timeout) == ("reports", 2, 1, 60.0)
    assert kinds.get("t.hourly").handler is hourly
    assert sorted(schedules(kinds), key=lambda s: s.kind) == [
        Schedule("t.hourly", "0 * * * *", {}, "UTC"),
        Schedule("t.refresh", "*/5 * * * *", {"full": True}, "Europe/Paris"),
    ]
    # Only the registry given.
    assert "t.refresh" not in conveyor.registry
    assert all(s.kind != "t.refresh" for s in schedules())


@pytest.mark.parametrize(
    "cron",
    ["not a cron", "61 * * * *", "* * * *", "0 25 * * *", "* * * * * 61", "* * * * * * *", ""],
)
def test_an_invalid_cron_expression_is_refused_naming_the_job(
    kinds: conveyor.Registry, cron: str
) -> None:
    with pytest.raises(ValueError, match=r"periodic job 't\.bad'") as raised:

        @conveyor.periodic(cron, "t.bad", registry=kinds)
        async def bad(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert repr(cron) in str(raised.value)
    assert "t.bad" not in kinds
    assert schedules(kinds) == []


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Pariss", "../etc/passwd", ""])
def test_an_unknown_time_zone_is_refused_naming_the_job(
    kinds: conveyor.Registry, zone: str
) -> None:
    with pytest.raises(ValueError, match=r"periodic job 't\.bad'.*time zone") as raised:

        @conveyor.periodic("0 9 * * *", "t.bad", timezone=zone, registry=kinds)
        async def bad(ctx: conveyor.JobContext, payload: Any) -> None:
            return None

    assert repr(zone) in str(raised.value)
    assert "t.bad" not in kinds
    assert schedules(kinds) == []


# -- Scheduler -----------------------------------------------------------------------------
def _register_cron(kinds: conveyor.Registry, name: str, queue: str, tick: float) -> None:
    async def handler(ctx: conveyor.JobContext, payload: Any) -> dict[str, Any]:
        return {"tick": ctx.job.meta.get("periodic_tick"), "payload": payload}

    conveyor.job(name, queue=queue, registry=kinds)(handler)
    add_schedule(AtTicks(name, "* * * * *", {"n": 1}, ticks=(tick,)), kinds)


Calls = list[tuple[float, Enqueued | None]]


def _spy_on_enqueue_periodic(monkeypatch: pytest.MonkeyPatch, store: Store, calls: Calls) -> None:
    """Record when ``store.enqueue_periodic`` was called and what it returned."""
    real = store.enqueue_periodic

    async def spy(job: NewJob, tick: float) -> Enqueued | None:
        called = time.time()
        result = await real(job, tick)
        calls.append((called, result))
        return result

    monkeypatch.setattr(store, "enqueue_periodic", spy)


async def test_two_schedulers_on_two_store_instances_enqueue_a_tick_once(
    store: Store,
    peer_store: Store,
    kinds: conveyor.Registry,
    client: conveyor.Client,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tick = time.time() + 0.3
    _register_cron(kinds, "t.cron", "cron", tick)
    calls: Calls = []
    for instance in (store, peer_store):
        _spy_on_enqueue_periodic(monkeypatch, instance, calls)
    schedulers = [Scheduler(instance, kinds, ["cron"]) for instance in (store, peer_store)]
    tasks = [asyncio.create_task(s.run()) for s in schedulers]
    try:
        await eventually(lambda: len(calls) == 2, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Both tried, at the tick and not before; one of them enqueued.
    assert all(called >= tick - 0.01 for called, _ in calls), (tick, calls)
    winners = [result for _, result in calls if result is not None]
    assert len(winners) == 1, calls
    assert winners[0].created
    [job] = await client.list(kind="t.cron")
    assert job.id == winners[0].id
    assert job.meta == {"periodic_tick": iso(tick)}
    assert (job.queue, job.payload, job.state, job.attempt) == ("cron", {"n": 1}, "queued", 0)


async def test_a_scheduler_schedules_only_kinds_of_the_queues_it_serves(
    store: Store, kinds: conveyor.Registry, client: conveyor.Client, eventually: Eventually
) -> None:
    tick = time.time() + 0.2
    _register_cron(kinds, "t.cron", "cron", tick)
    _register_cron(kinds, "t.report", "reports", tick)

    assert [s.kind for s in Scheduler(store, kinds, ["cron"]).schedules] == ["t.cron"]
    assert [s.kind for s in Scheduler(store, kinds, ["reports", "x"]).schedules] == ["t.report"]
    idle = Scheduler(store, kinds, ["default"])
    assert idle.schedules == []
    await asyncio.wait_for(idle.run(), 1)  # nothing to schedule: returns at once

    scheduler = Scheduler(store, kinds, ["cron"])
    task = asyncio.create_task(scheduler.run())
    try:
        await eventually(lambda: client.list(kind="t.cron"), timeout=5)
        # Both kinds tick at the same instant: had the scheduler taken t.report, it would
        # have enqueued it right after t.cron.
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await client.list(kind="t.report") == []
    assert len(await client.list(kind="t.cron")) == 1


async def test_workers_on_two_store_instances_run_a_periodic_job_once_per_tick(
    store: Store,
    peer_store: Store,
    kinds: conveyor.Registry,
    client: conveyor.Client,
    workers: Any,
    eventually: Eventually,
) -> None:
    tick = time.time() + 0.3
    _register_cron(kinds, "t.cron", "cron", tick)
    for instance in (store, peer_store):
        workers.start(workers.make(store=instance, queues={"cron": 2}))
    # A worker that does not serve queue cron schedules nothing.
    workers.start(workers.make(queues={"default": 2}))

    async def completed() -> list[conveyor.Job]:
        return [j for j in await client.list(kind="t.cron") if j.state == "completed"]

    [job] = await eventually(completed, timeout=5)
    # Every worker's scheduler has passed the tick; nothing more is coming.
    await asyncio.sleep(0.2)
    assert [j.id for j in await client.list(kind="t.cron")] == [job.id]
    assert job.attempt == 1
    assert job.meta == {"periodic_tick": iso(tick)}
    assert job.result == {"tick": iso(tick), "payload": {"n": 1}}
