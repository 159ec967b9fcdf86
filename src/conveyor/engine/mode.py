"""The worker's mode: one state, moved only along the transitions drawn here.

::

    RUNNING <--> MEMORY_HIGH        claims only in RUNNING
       |             |
       +------+------+
              v
          DRAINING  ---------+      stop(): running jobs get shutdown_grace
              |              |
              v              v
          STOPPING ----> HARD_STOP  grace over / a second stop(): hand back at once

Every mode past RUNNING and MEMORY_HIGH is a stopping one: nothing is claimed, offers
are taken back, a job handed over is handed back, and the loop returns once nothing runs
and nothing is held.
"""

from __future__ import annotations

import asyncio
import enum


class Mode(enum.Enum):
    RUNNING = "running"
    """Claims for its free slots and offers them for handoff."""
    MEMORY_HIGH = "memory high"
    """The process is above ``max_memory_mb``: running jobs go on, nothing new starts."""
    DRAINING = "draining"
    """Stopping: running jobs have ``shutdown_grace`` seconds to finish."""
    STOPPING = "stopping"
    """Stopping, the grace over: running jobs are handed back."""
    HARD_STOP = "hard stop"
    """Stopping at once (a second stop): no grace, no wait between retries."""


_NEXT: dict[Mode, frozenset[Mode]] = {
    Mode.RUNNING: frozenset({Mode.MEMORY_HIGH, Mode.DRAINING}),
    Mode.MEMORY_HIGH: frozenset({Mode.RUNNING, Mode.DRAINING}),
    Mode.DRAINING: frozenset({Mode.STOPPING, Mode.HARD_STOP}),
    Mode.STOPPING: frozenset({Mode.HARD_STOP}),
    Mode.HARD_STOP: frozenset(),
}

_STOPPING = frozenset({Mode.DRAINING, Mode.STOPPING, Mode.HARD_STOP})


class WorkerMode:
    """The mode a worker is in, and an event set on the hard stop (what the grace and the
    waits after a failed exchange are cut short by)."""

    __slots__ = ("hard_stop", "now")

    def __init__(self) -> None:
        self.now = Mode.RUNNING
        self.hard_stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.now in _STOPPING

    def move(self, expected: Mode | frozenset[Mode], to: Mode) -> bool:
        """Move to ``to`` if the mode is ``expected`` (or one of them); False, and no
        change, if it is not. Raises ``RuntimeError`` for a move the diagram does not
        draw: a bug, not a race."""
        allowed = expected if isinstance(expected, frozenset) else frozenset({expected})
        for source in allowed:
            if to not in _NEXT[source]:
                raise RuntimeError(f"worker mode: no transition from {source.value} to {to.value}")
        if self.now not in allowed:
            return False
        self.now = to
        if to is Mode.HARD_STOP:
            self.hard_stop.set()
        return True

    def stop(self) -> None:
        """What :meth:`Worker.stop` asks: drain, or at a second call stop at once."""
        if not self.move(frozenset({Mode.RUNNING, Mode.MEMORY_HIGH}), Mode.DRAINING):
            self.move(frozenset({Mode.DRAINING, Mode.STOPPING}), Mode.HARD_STOP)
