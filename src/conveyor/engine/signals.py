"""Test signals: points in the worker that a test can await instead of sleeping.

In production they are off: an emission costs a check and does nothing (the worker
checks :attr:`WorkerSignals.on` before it builds a value to emit). A test turns them on
with ``worker.signals.enable()`` before the worker runs, then awaits the moment it
needs::

    await worker.signals.idle.wait()                  # started: first pass done
    await worker.signals.job_started.wait(lambda job: job.id == enqueued.id)
    await worker.signals.next_idle()                  # "nothing happens" checks

:meth:`Signal.wait` registers its waiter at once, before it is awaited, so a test can
ask for the next emission first and then cause it. An emission is seen only by waiters
registered before it. A wait that is not answered within its timeout fails the test
with an :class:`AssertionError` that names the signal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, NamedTuple, TypeVar

from conveyor.store.records import ClaimRequest, Job, SettleResult

T = TypeVar("T")

WAIT_S = 5.0
"""How long a test waits for a signal unless it says otherwise."""


class Idle(NamedTuple):
    """A pass of the loop found nothing to do and the loop is about to sleep."""

    running: int
    """Jobs running."""
    held: int
    """Outcomes and progress reports held for the next exchange."""
    exchanged_at: float
    """When the latest exchange began (``time.monotonic``; -inf before the first)."""
    claimed_at: float
    """When the latest exchange that carried a claim began (-inf before the first)."""


class Exchanged(NamedTuple):
    """A settle-and-claim round trip came back."""

    began: float
    """When the pass that made it began (``time.monotonic``), at or before the call."""
    claim: ClaimRequest | None
    result: SettleResult


class HandoffTaken(NamedTuple):
    """A handoff notice addressed to this worker was handled."""

    job_id: int
    attempt: int
    accepted: bool
    """True if the job was taken up (started, or handed back for want of a slot); False
    if it was already running here, adopted before, or no longer this worker's."""


class Pruned(NamedTuple):
    began: float
    """When the pruner's pass began (``time.monotonic``)."""
    deleted: int


class _Waiter(Generic[T]):
    __slots__ = ("future", "until")

    def __init__(self, future: asyncio.Future[T], until: Callable[[T], bool] | None) -> None:
        self.future = future
        self.until = until


class Pending(Generic[T]):
    """A registered wait for a signal; await it (once) for the value."""

    __slots__ = ("_future", "_signal", "_timeout")

    def __init__(self, signal: Signal[T], future: asyncio.Future[T], timeout: float) -> None:
        self._signal = signal
        self._future = future
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, T]:
        return self._result().__await__()

    async def _result(self) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._future
        except TimeoutError:
            raise AssertionError(
                f"the worker's {self._signal.name!r} signal did not come within {self._timeout} s"
            ) from None
        finally:
            self._signal._forget(self._future)


class Signal(Generic[T]):
    """One kind of moment in the worker, with the value that describes it."""

    __slots__ = ("_waiters", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._waiters: list[_Waiter[T]] | None = None
        """None while off: :meth:`emit` returns at once."""
        self.count = 0
        """Emissions since the signal was turned on."""

    def enable(self) -> None:
        if self._waiters is None:
            self._waiters = []

    def emit(self, value: T) -> None:
        waiters = self._waiters
        if waiters is None:
            return
        self.count += 1
        if not waiters:
            return
        kept: list[_Waiter[T]] = []
        for waiter in waiters:
            future = waiter.future
            if future.done():
                continue
            try:
                matched = waiter.until is None or waiter.until(value)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(value)
            else:
                kept.append(waiter)
        self._waiters = kept

    def wait(
        self, until: Callable[[T], bool] | None = None, *, timeout: float = WAIT_S
    ) -> Pending[T]:
        """The next emission from now on (whose value satisfies ``until``, if given).
        Registered at once; the timeout runs from when it is awaited."""
        if self._waiters is None:
            raise RuntimeError(
                f"the worker's {self.name!r} signal is off: call worker.signals.enable() "
                "before the worker runs"
            )
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(future, until))
        return Pending(self, future, timeout)

    def _forget(self, future: asyncio.Future[T]) -> None:
        if self._waiters is not None:
            self._waiters = [w for w in self._waiters if w.future is not future]


class WorkerSignals:
    """The worker's test signals, all off until :meth:`enable`."""

    def __init__(self) -> None:
        self.on = False
        """Whether they are on: the worker checks it before it builds a value to emit."""
        self.idle: Signal[Idle] = Signal("idle")
        self.exchanged: Signal[Exchanged] = Signal("exchanged")
        self.job_started: Signal[Job] = Signal("job_started")
        """A job's task was created (the job is the worker's to run)."""
        self.handoff_taken: Signal[HandoffTaken] = Signal("handoff_taken")
        self.adopted: Signal[tuple[Job, ...]] = Signal("adopted")
        """An adoption came back, with the jobs taken up (often none)."""
        self.offers_changed: Signal[frozenset[str]] = Signal("offers_changed")
        """An exchange made, grew or took back this worker's offers: the queues in which
        it now offers free slots."""
        self.pruned: Signal[Pruned] = Signal("pruned")

    def enable(self) -> WorkerSignals:
        self.on = True
        for signal in self._all():
            signal.enable()
        return self

    def next_idle(
        self, *, claimed: bool = True, held: int | None = 0, timeout: float = WAIT_S
    ) -> Pending[Idle]:
        """The first idle pass after an exchange that began from now on (one that carried
        a claim, with ``claimed``; pass False where the worker cannot claim: full,
        memory high or stopping), with ``held`` reports still held (None: any).

        Call it after the action whose effect must not show: when it answers, the worker
        has claimed (or exchanged) since and has nothing left to tell the store. A claim
        comes with a notice, a due time, the safety poll or the rescue."""
        since = time.monotonic()

        def after(idle: Idle) -> bool:
            began = idle.claimed_at if claimed else idle.exchanged_at
            return began >= since and (held is None or idle.held == held)

        return self.idle.wait(after, timeout=timeout)

    def _all(self) -> tuple[Signal[Any], ...]:
        return (
            self.idle,
            self.exchanged,
            self.job_started,
            self.handoff_taken,
            self.adopted,
            self.offers_changed,
            self.pruned,
        )
