"""The periodic tick a store enqueues once cluster-wide."""

from __future__ import annotations


class TickTaken(Exception):
    """Raised inside a periodic enqueue's transaction when another worker already
    enqueued its tick: it rolls the new job back, and the store answers None
    (:meth:`conveyor.store.base.JobQueue.enqueue_periodic`). It never leaves the store."""
