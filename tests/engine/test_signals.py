"""Test signals: off and free by default; awaited in tests with a timeout that fails."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor.engine.signals import Signal, WorkerSignals


def test_an_emission_while_off_does_nothing_and_a_wait_says_how_to_turn_them_on() -> None:
    signal: Signal[int] = Signal("thing")
    signal.emit(1)
    assert signal.count == 0
    with pytest.raises(RuntimeError, match=r"'thing' signal is off: call worker\.signals\.enable"):
        signal.wait()


async def test_a_wait_sees_the_first_matching_emission_after_it_was_registered() -> None:
    signal: Signal[int] = Signal("thing")
    signal.enable()
    signal.emit(1)  # before any wait: seen by none
    even = signal.wait(lambda n: n % 2 == 0)
    anything = signal.wait()
    signal.emit(3)
    signal.emit(4)
    assert (await anything, await even) == (3, 4)
    assert signal.count == 3


async def test_a_wait_that_is_not_answered_fails_the_test_naming_the_signal() -> None:
    signal: Signal[int] = Signal("thing")
    signal.enable()
    with pytest.raises(AssertionError, match=r"'thing' signal did not come within 0\.05 s"):
        await signal.wait(timeout=0.05)
    signal.emit(1)  # the timed-out waiter is gone
    assert signal.count == 1


async def test_a_condition_that_raises_fails_its_wait_not_the_emitter() -> None:
    signal: Signal[int] = Signal("thing")
    signal.enable()
    broken = signal.wait(lambda n: 1 // n > 0)
    signal.emit(0)
    with pytest.raises(ZeroDivisionError):
        await broken


def test_a_worker_has_its_signals_off() -> None:
    signals = WorkerSignals()
    assert not signals.on
    assert signals.enable() is signals
    assert signals.on


async def test_next_idle_waits_for_a_claim_made_after_it_was_asked(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    # No handoff (it would start the job without a claim) and no poll: only the
    # enqueue's notice makes the worker claim.
    worker = await workers.start_idle(handoff=False, safety_poll_interval=30, rescue_interval=30)
    # Both asked before the enqueue: its notice can reach the worker, and the worker claim,
    # before the enqueue returns.
    claimed = worker.signals.exchanged.wait(lambda e: e.claim is not None and e.result.claimed)
    next_idle = worker.signals.next_idle()
    enqueued = await client.enqueue("t.noop")

    idle = await next_idle
    exchange = await claimed
    assert [job.id for job in exchange.result.claimed] == [enqueued.id]
    assert idle.claimed_at >= exchange.began
    assert (await client.get(enqueued.id)).state != conveyor.JobState.QUEUED


async def test_next_idle_without_a_claim_waits_for_an_exchange_with_nothing_held(
    kinds: conveyor.Registry, client: conveyor.Client, workers: Any
) -> None:
    @conveyor.job("t.noop", registry=kinds)
    async def noop(ctx: conveyor.JobContext, payload: Any) -> None:
        return None

    # No rescue pass either, which would carry the result before its flush time.
    worker = await workers.start_idle(
        flush_interval=0.3, safety_poll_interval=30, rescue_interval=30
    )
    ended = worker.signals.idle.wait(lambda idle: idle.running == 0 and idle.held == 1)
    enqueued = await client.enqueue("t.noop")
    await ended
    assert (await client.get(enqueued.id)).state == conveyor.JobState.RUNNING

    # The result is held for the flush interval: the idle pass asked for comes after the
    # exchange that recorded it.
    idle = await worker.signals.next_idle(claimed=False)
    assert (idle.running, idle.held) == (0, 0)
    assert (await client.get(enqueued.id)).state == conveyor.JobState.COMPLETED
