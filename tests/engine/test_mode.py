"""The worker's mode moves only along the drawn transitions."""

from __future__ import annotations

import pytest

from conveyor.engine.mode import Mode, WorkerMode


def test_a_worker_starts_running() -> None:
    mode = WorkerMode()
    assert (mode.now, mode.stopping, mode.hard_stop.is_set()) == (Mode.RUNNING, False, False)


def test_memory_high_and_back() -> None:
    mode = WorkerMode()
    assert mode.move(Mode.RUNNING, Mode.MEMORY_HIGH)
    assert not mode.move(Mode.RUNNING, Mode.MEMORY_HIGH)  # not where it expected: no change
    assert mode.now is Mode.MEMORY_HIGH
    assert mode.move(Mode.MEMORY_HIGH, Mode.RUNNING)
    assert mode.now is Mode.RUNNING


@pytest.mark.parametrize("start", [Mode.RUNNING, Mode.MEMORY_HIGH])
def test_stop_drains_and_a_second_stop_stops_at_once(start: Mode) -> None:
    mode = WorkerMode()
    mode.now = start
    mode.stop()
    assert (mode.now, mode.stopping, mode.hard_stop.is_set()) == (Mode.DRAINING, True, False)
    mode.stop()
    assert (mode.now, mode.hard_stop.is_set()) == (Mode.HARD_STOP, True)
    mode.stop()
    assert mode.now is Mode.HARD_STOP


def test_the_grace_ends_in_stopping_unless_a_second_stop_came_first() -> None:
    mode = WorkerMode()
    mode.stop()
    assert mode.move(Mode.DRAINING, Mode.STOPPING)
    assert mode.stopping
    mode.stop()
    assert mode.now is Mode.HARD_STOP
    assert not mode.move(Mode.DRAINING, Mode.STOPPING)
    assert mode.now is Mode.HARD_STOP


def test_memory_does_not_move_a_stopping_worker() -> None:
    mode = WorkerMode()
    mode.stop()
    assert not mode.move(Mode.RUNNING, Mode.MEMORY_HIGH)
    assert not mode.move(Mode.MEMORY_HIGH, Mode.RUNNING)
    assert mode.now is Mode.DRAINING


@pytest.mark.parametrize(
    ("source", "to"),
    [
        (Mode.DRAINING, Mode.RUNNING),
        (Mode.STOPPING, Mode.DRAINING),
        (Mode.HARD_STOP, Mode.RUNNING),
        (Mode.RUNNING, Mode.STOPPING),
        (Mode.MEMORY_HIGH, Mode.HARD_STOP),
    ],
)
def test_a_move_the_diagram_does_not_draw_is_refused(source: Mode, to: Mode) -> None:
    mode = WorkerMode()
    mode.now = source
    with pytest.raises(RuntimeError, match=f"no transition from {source.value} to {to.value}"):
        mode.move(source, to)
    assert mode.now is source
