"""Periodic (cron) jobs, enqueued exactly once per tick however many workers run.

::

    @conveyor.periodic("*/5 * * * *", "reports.refresh", queue="reports")
    async def refresh(ctx: conveyor.JobContext, payload: dict[str, object]) -> None: ...

Every worker that serves the kind's queue runs a scheduler. At each tick, each of them
asks the store to enqueue the job *for that tick*; the store records (kind, tick) under a
primary key in the same transaction, so only the first succeeds. Ticks missed while no
worker ran are not caught up: a periodic job says "every five minutes", not "once for
each five minutes that passed".

The schedules are kept here, by the registry their kinds are registered in; the registry
itself knows only kinds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from weakref import WeakKeyDictionary
from zoneinfo import ZoneInfo

from croniter import croniter

from conveyor.engine.kinds import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    Registry,
    default_registry,
    job,
)
from conveyor.engine.retry import Backoff
from conveyor.logs import get_logger
from conveyor.store.base import Store
from conveyor.store.records import JSON

F = TypeVar("F", bound=Callable[..., Any])

log = get_logger("scheduler")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic kind runs and with what payload."""

    kind: str
    cron: str
    payload: JSON = field(default_factory=dict)
    timezone: str = "UTC"

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (Unix seconds)."""
        start = datetime.fromtimestamp(after, ZoneInfo(self.timezone))
        return float(croniter(self.cron, start).get_next(float))


_schedules: WeakKeyDictionary[Registry, dict[str, Schedule]] = WeakKeyDictionary()


def add_schedule(schedule: Schedule, registry: Registry | None = None) -> None:
    """Enqueue ``schedule.kind``, registered already in ``registry`` (default: the
    default registry), on its schedule; replaces that kind's earlier schedule."""
    target = registry if registry is not None else default_registry
    target.get(schedule.kind)
    _schedules.setdefault(target, {})[schedule.kind] = schedule


def schedules(registry: Registry | None = None) -> list[Schedule]:
    """The schedules of the periodic kinds of ``registry`` (default: the default one)."""
    target = registry if registry is not None else default_registry
    return list(_schedules.get(target, {}).values())


def periodic(
    cron: str,
    name: str,
    *,
    payload: JSON = None,
    timezone: str = "UTC",
    queue: str = DEFAULT_QUEUE,
    priority: int = DEFAULT_PRIORITY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    non_retryable: Iterable[type[BaseException]] = (),
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as job kind ``name`` and enqueue it on the cron
    schedule ``cron`` (five fields: minute hour day-of-month month day-of-week, and
    optionally a sixth, the second: ``* * * * * */10`` is every ten seconds), evaluated
    in ``timezone``. The other arguments are those of :func:`conveyor.job`."""
    if not croniter.is_valid(cron) or not (len(cron.split()) in (5, 6) or cron.startswith("@")):
        raise ValueError(
            f"periodic job {name!r}: {cron!r} is not a cron expression; write five fields "
            "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'), a sixth for "
            "the second if need be ('* * * * * */10'), or a macro such as '@daily'"
        )
    try:
        ZoneInfo(timezone)
    except Exception as exc:
        raise ValueError(f"periodic job {name!r}: unknown time zone {timezone!r}") from exc
    target = registry if registry is not None else default_registry
    register_kind = job(
        name,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        timeout=timeout,
        backoff=backoff,
        non_retryable=non_retryable,
        registry=target,
    )

    def decorate(fn: F) -> F:
        register_kind(fn)
        schedule = Schedule(name, cron, payload if payload is not None else {}, timezone)
        # A payload the kind refuses would fail at every tick: refuse it now instead.
        target.get(name).validate_payload(schedule.payload)
        add_schedule(schedule, target)
        return fn

    return decorate


class Scheduler:
    """Enqueues the periodic kinds of the given queues at their ticks."""

    def __init__(self, store: Store, kinds: Registry, queues: Iterable[str]) -> None:
        served = set(queues)
        self.store = store
        self.kinds = kinds
        self.schedules = [s for s in schedules(kinds) if kinds.get(s.kind).queue in served]

    async def run(self) -> None:
        """Run until cancelled."""
        if not self.schedules:
            return
        due = {s.kind: s.next_tick(time.time()) for s in self.schedules}
        while True:
            kind, tick = min(due.items(), key=lambda item: item[1])
            await asyncio.sleep(max(0.0, tick - time.time()))
            schedule = next(s for s in self.schedules if s.kind == kind)
            await self._enqueue(schedule, tick)
            due[kind] = schedule.next_tick(tick)

    async def _enqueue(self, schedule: Schedule, tick: float) -> None:
        spec = self.kinds.get(schedule.kind)
        try:
            new = spec.new_job(
                schedule.payload,
                meta={"periodic_tick": datetime.fromtimestamp(tick, UTC).isoformat()},
            )
            result = await self.store.enqueue_periodic(new, tick)
        except Exception:
            # This tick is lost (the next one is tried); the log says why.
            log.exception("periodic enqueue failed", kind=spec.name, queue=spec.queue)
            return
        if result is not None:
            log.info("periodic job enqueued", kind=spec.name, queue=spec.queue, job_id=result.id)
