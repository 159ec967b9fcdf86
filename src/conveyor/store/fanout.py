"""Notices fanned out to the listeners of one store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from conveyor.store.base import Listener, Notice


class Fanout:
    """The listeners of a store (:meth:`conveyor.store.base.JobQueue.add_listener`), each
    called with every notice published, on the event loop, in the order they were added.

    A listener removed while a notice is being delivered still gets that notice: the
    delivery runs over the listeners as they were when it began."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; returns a function that removes it (safe to call twice)."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def publish(self, notice: Notice) -> None:
        """Call every listener with ``notice``."""
        for listener in tuple(self._listeners):
            listener(notice)
