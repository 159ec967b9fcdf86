"""The worker's offers for handoff, the jobs handed to it, and adoption.

Handoff (stores whose :attr:`~conveyor.store.base.Capabilities.handoff` is set): a claim
that comes back short offers the slots it left free, and an enqueue may then hand its job
straight to this worker in a notice, already running under it. :class:`Handoffs` keeps the
offers in step (slots its jobs free are added; all are taken back when it stops
fetching), takes up the jobs handed over, and after notices were lost, or a claim's
answer was, adopts the jobs running under this worker that it never heard of.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Collection, Iterable

from conveyor.engine.exchange import Exchanger
from conveyor.engine.signals import HandoffTaken, WorkerSignals
from conveyor.logs import get_logger
from conveyor.store.base import JobHandedOff, Store, StoreError
from conveyor.store.records import ClaimRequest, Job, JobState, Outcome, OutcomeKind, SettleResult

log = get_logger("worker")

ADOPTED_MEMORY_S = 60.0
"""How long an adopted attempt is remembered, so that its late handoff notice (if it
comes at all) does not start it twice."""


class Handoffs:
    """What the store offers of this worker's free slots, and the jobs that reach it
    other than by its own claims."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        exchanger: Exchanger,
        signals: WorkerSignals,
        *,
        enabled: bool,
        accept: Callable[[Iterable[Job]], None],
        runs: Callable[[int, int], bool],
        running_ids: Callable[[], Iterable[int]],
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.enabled = enabled
        """Claims offer their free slots: asked for, and the store can hand off."""
        self._exchanger = exchanger
        self._signals = signals
        self._accept = accept
        self._runs = runs
        self._running_ids = running_ids
        self._wake = wake
        self._offered: set[str] = set()
        """Queues in which the store holds an offer of this worker's free slots."""
        self.withdraw_due = False
        """Take every offer back at the next exchange (stopping, memory high)."""
        self.adopt_due = False
        self._adopting: set[tuple[int, int]] | None = None
        """While an adoption is in flight: the handoffs taken meanwhile."""
        self._adopted: dict[tuple[int, int], float] = {}
        """Attempts adopted lately (monotonic time): their handoff notice may still come."""
        self._reads: set[asyncio.Task[None]] = set()

    # -- offers --------------------------------------------------------------------------
    def withdraw(self) -> None:
        """Take every offer back at the next exchange."""
        if self.enabled:
            self.withdraw_due = True

    def slot_freed(self, queue: str) -> None:
        """A job of ``queue`` ended: its slot joins the offer at the next exchange."""
        if queue in self._offered and not self.withdraw_due:
            self._exchanger.hold_freed(queue)

    def begin_exchange(self) -> bool:
        """Whether the exchange about to start takes the offers back. From now on no slot
        freed joins an offer."""
        withdraw, self.withdraw_due = self.withdraw_due, False
        if withdraw:
            self._offered.clear()
        return withdraw

    def exchange_failed(self, withdraw: bool) -> None:
        self.withdraw_due = self.withdraw_due or withdraw

    def exchanged(
        self, claim: ClaimRequest | None, result: SettleResult, *, withdrew: bool, freed: bool
    ) -> None:
        """Learn from an exchange that came back which queues hold an offer now."""
        if claim is not None:
            self._offered.difference_update(claim.slots)
            self._offered.update(result.offered)
        if self._signals.on and (withdrew or freed or (claim is not None and self.enabled)):
            self._signals.offers_changed.emit(frozenset(self._offered))

    # -- handoff -------------------------------------------------------------------------
    def take(self, notice: JobHandedOff) -> None:
        """A job handed to this worker in a notice: run it, unless it already runs here or
        was adopted before its notice came."""
        key = (notice.job_id, notice.attempt)
        if key in self._adopted or self._runs(notice.job_id, notice.attempt):
            self._handled(notice, accepted=False)
            return
        if notice.job is None:
            task = asyncio.create_task(self._read(notice))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
            return
        if self._adopting is not None:
            self._adopting.add(key)
        self._accept((notice.job,))
        self._handled(notice, accepted=True)

    async def _read(self, notice: JobHandedOff) -> None:
        """A job too large for its notice: read it, and take it if it is still ours."""
        try:
            job = await self.store.get_job(notice.job_id)
        except StoreError as exc:
            log.warning(
                "could not read a job handed to this worker; it will be adopted",
                worker_id=self.worker_id,
                job_id=notice.job_id,
                error=str(exc),
            )
            self.adopt_due = True
            return
        if (
            job is not None
            and job.state is JobState.RUNNING
            and job.locked_by == self.worker_id
            and job.attempt == notice.attempt
        ):
            # Checked again: the attempt may have been adopted (and even finished) while
            # the read was in flight.
            self.take(dataclasses.replace(notice, job=job))
        else:
            self._handled(notice, accepted=False)

    def _handled(self, notice: JobHandedOff, *, accepted: bool) -> None:
        if self._signals.on:
            self._signals.handoff_taken.emit(HandoffTaken(notice.job_id, notice.attempt, accepted))

    def cancel_reads(self) -> None:
        for task in self._reads:
            task.cancel()

    # -- adoption ------------------------------------------------------------------------
    def adopt_soon(self) -> None:
        self.adopt_due = True
        self._wake()

    async def adopt(self) -> None:
        """Take up the jobs running under this worker that it never heard of."""
        self.adopt_due = False
        now = time.monotonic()
        self._adopted = {k: t for k, t in self._adopted.items() if now - t < ADOPTED_MEMORY_S}
        known = [*self._running_ids(), *self._exchanger.outcome_job_ids()]
        self._adopting = set()
        try:
            jobs = await self.store.adopt(self.worker_id, known)
        finally:
            taken, self._adopting = self._adopting, None
        adopted: list[Job] = []
        for job in jobs:
            key = (job.id, job.attempt)
            if key in taken or self._runs(job.id, job.attempt):
                continue
            self._adopted[key] = now
            adopted.append(job)
            log.warning(
                "adopting a job running under this worker that it had not heard of",
                worker_id=self.worker_id,
                job_id=job.id,
                queue=job.queue,
                attempt=job.attempt,
            )
        self._accept(adopted)
        self._signals.adopted.emit(tuple(adopted))

    async def close(self, keep: Collection[int]) -> None:
        """On the way out: take the offers back, then hand back any job an enqueue handed
        over before that and whose notice came too late to be heard (never one of
        ``keep``: their threads still run here)."""
        self.withdraw_due = False
        self._offered.clear()
        await self._exchanger.exchange(None, began=time.monotonic(), rescue=False, withdraw=True)
        late = await self.store.adopt(self.worker_id, keep)
        if late:
            released = [Outcome(j.id, j.attempt, OutcomeKind.RELEASED, j.queue) for j in late]
            await self.store.settle_and_claim(released, [], self.worker_id, None)
