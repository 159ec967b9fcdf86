"""The worker's exchange: the one round trip to the store (``settle_and_claim``) that
records what the worker has to report and claims jobs for its free slots.

:class:`Exchanger` owns what waits for the next exchange: finished attempts, the latest
progress of each running job and slots freed in offered queues, with the flush clock
that says when they must go even without a claim to carry them. It also owns what
happens when an exchange fails: the reports are held again for the next one, the worker
backs off (but runs an exchange the database rolled back to break a deadlock again at
once), and a batch the database refused is recorded apart, one report at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence

from conveyor.engine.context import storable_text
from conveyor.engine.executor import failure
from conveyor.engine.kinds import Registry
from conveyor.logs import get_logger
from conveyor.store.base import (
    DataRejected,
    HandoffQueue,
    Offers,
    Store,
    StoreError,
    TransactionRolledBack,
)
from conveyor.store.records import (
    ClaimRequest,
    ErrorEntry,
    JobState,
    Outcome,
    OutcomeKind,
    Progress,
    SettleResult,
)

log = get_logger("worker")


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed exchange in a row."""
    return min(5.0, 0.1 * 2.0 ** min(failures, 6))


IMMEDIATE_RETRIES = 3
"""Exchanges in a row the database may roll back to break a deadlock or a serialization
conflict (:class:`TransactionRolledBack`) that the worker runs again at once; past them it
backs off as from any failure, so a conflict that keeps coming back cannot spin."""


class Exchanger:
    """What the worker holds for the store, and the round trip that delivers it."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        kinds: Registry,
        flush_interval: float,
        *,
        handoff: HandoffQueue | None,
    ) -> None:
        self.store = store
        self.handoff = handoff
        """The store, when this worker's claims offer their free slots for handoff."""
        self.worker_id = worker_id
        self.kinds = kinds
        self.flush_interval = flush_interval
        self._outcomes: list[Outcome] = []
        self._progress: dict[int, Progress] = {}
        self._freed: dict[str, int] = {}
        """Slots freed in offered queues since the last exchange: added to the offers."""
        self.flush_at = 0.0
        """When what is held must go (monotonic), set by the first report held."""
        self.failures = 0
        """Failed passes in a row: the backoff grows with them."""
        self.rolled_back = 0
        """Passes in a row the database rolled back, run again at once (at most
        :data:`IMMEDIATE_RETRIES`)."""
        self.exchanged_at = float("-inf")
        """When the latest exchange that came back began (monotonic)."""
        self.claimed_at = float("-inf")
        """When the latest exchange that came back with a claim began (monotonic)."""

    # -- holding -------------------------------------------------------------------------
    def hold(self, outcome: Outcome) -> None:
        if not (self._outcomes or self._progress or self._freed):
            self.flush_at = time.monotonic() + self.flush_interval
        self._outcomes.append(outcome)

    def hold_progress(self, progress: Progress) -> None:
        """Hold a job's latest progress; a later report of the same job replaces it."""
        if not (self._outcomes or self._progress or self._freed):
            self.flush_at = time.monotonic() + self.flush_interval
        self._progress[progress.job_id] = progress

    def hold_freed(self, queue: str) -> None:
        if not (self._outcomes or self._progress or self._freed):
            self.flush_at = time.monotonic() + self.flush_interval
        self._freed[queue] = self._freed.get(queue, 0) + 1

    @property
    def held(self) -> int:
        """Outcomes and progress reports held."""
        return len(self._outcomes) + len(self._progress)

    @property
    def holds_outcomes(self) -> bool:
        return bool(self._outcomes)

    @property
    def holds_freed(self) -> bool:
        return bool(self._freed)

    def outcome_job_ids(self) -> list[int]:
        return [o.job_id for o in self._outcomes]

    def due(self, now: float, stopping: bool) -> bool:
        """Whether what is held must go now: once the first of it has waited
        ``flush_interval``, or at once when stopping. Until then it waits for the next
        claim to carry it: each exchange is a round trip and a commit."""
        if not (self._outcomes or self._progress or self._freed):
            return False
        return stopping or now >= self.flush_at

    def wake_at(self) -> float | None:
        """When the loop must wake to flush (monotonic), if outcomes or progress are held;
        freed slots alone wait for the next exchange."""
        return self.flush_at if self._outcomes or self._progress else None

    # -- the round trip --------------------------------------------------------------------
    async def exchange(
        self, claim: ClaimRequest | None, *, began: float, rescue: bool, withdraw: bool
    ) -> SettleResult:
        """Send what is held with ``claim`` (and the rescue, and the withdrawal of every
        offer, when asked). If it fails, nothing was recorded: what was sent is held
        again for the next exchange."""
        outcomes, self._outcomes = self._outcomes, []
        progress = list(self._progress.values())
        self._progress.clear()
        freed, self._freed = ({} if withdraw else self._freed), {}
        try:
            if self.handoff is None:
                result = await self.store.settle_and_claim(
                    outcomes, progress, self.worker_id, claim, rescue=rescue
                )
            else:
                result = await self.handoff.settle_and_claim(
                    outcomes,
                    progress,
                    self.worker_id,
                    claim,
                    rescue=rescue,
                    offers=Offers(freed, withdraw),
                )
        except BaseException:
            self._hold_again(outcomes, progress, freed)
            raise
        self.exchanged_at = began
        if claim is not None:
            self.claimed_at = began
        self._check_applied(outcomes, result)
        return result

    def _hold_again(
        self, outcomes: list[Outcome], progress: list[Progress], freed: Mapping[str, int]
    ) -> None:
        self._outcomes[:0] = outcomes
        for p in progress:
            self._progress.setdefault(p.job_id, p)
        for queue, n in freed.items():
            self._freed[queue] = self._freed.get(queue, 0) + n

    def _check_applied(self, outcomes: Sequence[Outcome], result: SettleResult) -> None:
        for outcome, applied in zip(outcomes, result.applied, strict=True):
            if not applied:
                log.warning(
                    "job outcome not recorded: the job is no longer running under this "
                    "worker (rescued or cancelled meanwhile)",
                    job_id=outcome.job_id,
                    queue=outcome.queue,
                    attempt=outcome.attempt,
                    outcome=outcome.kind.value,
                )

    # -- failures --------------------------------------------------------------------------
    def passed(self) -> None:
        """A pass came back: the next failure starts the count (and the backoff) anew."""
        self.failures = 0
        self.rolled_back = 0

    async def recover(self, exc: Exception, hard_stop: asyncio.Event) -> bool:
        """After a pass failed with ``exc`` (call it in the ``except`` block): record a
        refused batch apart, return at once for a pass the database rolled back (to run it
        again), or back off. True if a claim's answer may have been lost, leaving jobs
        running under this worker that it never heard of (adopt them)."""
        if isinstance(exc, TransactionRolledBack) and self.rolled_back < IMMEDIATE_RETRIES:
            # Nothing of the pass stands and its reports are held again: nothing waits for
            # the database to come back. Adoption, as after any failed pass, is one cheap
            # query and covers an answer lost after a commit.
            self.rolled_back += 1
            log.warning(
                "worker exchange rolled back by the database, running it again",
                worker_id=self.worker_id,
                error=str(exc),
                retry=self.rolled_back,
                of=IMMEDIATE_RETRIES,
            )
            return True
        if isinstance(exc, DataRejected):
            # The statement failed whole: nothing was recorded or claimed.
            if self._outcomes or self._progress:
                try:
                    await self._settle_apart(exc)
                except StoreError as again:
                    exc = again
                else:
                    return False
            await self._back_off_after(exc, hard_stop)
            return False
        if isinstance(exc, StoreError):
            await self._back_off_after(exc, hard_stop)
            return True
        # A bug, not an outage: shown every time, but the jobs running here must not
        # die with the loop.
        log.exception("worker exchange failed unexpectedly", worker_id=self.worker_id)
        self.failures += 1
        await self._back_off(hard_stop)
        return True

    async def _back_off_after(self, exc: StoreError, hard_stop: asyncio.Event) -> None:
        self.failures += 1
        log.error(
            "store unavailable, retrying",
            worker_id=self.worker_id,
            error=str(exc),
            retry_in_s=backoff_delay(self.failures),
        )
        await self._back_off(hard_stop)

    async def _back_off(self, hard_stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hard_stop.wait(), backoff_delay(self.failures))

    # -- a refused batch -------------------------------------------------------------------
    async def _settle_apart(self, refused: DataRejected) -> None:
        """Record the held reports one at a time, after the database refused a batch of
        them: the good ones are recorded, a refused outcome becomes a failed attempt that
        quotes the database, and a refused progress report is dropped. Rare, so simple: one
        statement per report. A StoreError (the connection lost) keeps what is left for
        the next pass."""
        log.warning(
            "the database refused a batch of job reports; recording them one by one",
            worker_id=self.worker_id,
            error=str(refused),
        )
        outcomes, self._outcomes = self._outcomes, []
        progress = list(self._progress.values())
        self._progress.clear()
        for i, outcome in enumerate(outcomes):
            try:
                await self._settle_one(outcome)
            except StoreError:
                self._hold_again(outcomes[i:], progress, {})
                raise
        for i, report in enumerate(progress):
            try:
                await self.store.settle_and_claim((), (report,), self.worker_id, None)
            except DataRejected as exc:
                log.warning(
                    "progress report dropped: the database refused it",
                    worker_id=self.worker_id,
                    job_id=report.job_id,
                    attempt=report.attempt,
                    error=str(exc),
                )
            except StoreError:
                self._hold_again([], progress[i:], {})
                raise

    async def _settle_one(self, outcome: Outcome) -> None:
        candidate: Outcome | None = outcome
        while candidate is not None:
            try:
                result = await self.store.settle_and_claim((candidate,), (), self.worker_id, None)
            except DataRejected as exc:
                candidate = await self._instead_of_refused(outcome, candidate, exc)
                continue
            self._check_applied((candidate,), result)
            return

    async def _instead_of_refused(
        self, outcome: Outcome, refused: Outcome, exc: DataRejected
    ) -> Outcome | None:
        """What to record after the database refused ``refused`` (``outcome`` itself, or a
        failure recorded in its place); None: nothing more to try."""
        if refused is outcome:
            return await self._refused(outcome, exc)
        if refused.kind is OutcomeKind.RETRY:
            # The retry itself was refused (e.g. a backoff past the database's dates).
            return dataclasses.replace(refused, kind=OutcomeKind.FAILED)
        # The lease runs out and the job is rescued.
        log.error(
            "job outcome dropped: the database refused it and its failure too",
            worker_id=self.worker_id,
            job_id=outcome.job_id,
            queue=outcome.queue,
            attempt=outcome.attempt,
            error=str(exc),
        )
        return None

    async def _refused(self, outcome: Outcome, exc: DataRejected) -> Outcome | None:
        """The failed attempt to record in place of an outcome the database refused, or
        None if the job is no longer this worker's to report on."""
        job = await self.store.get_job(outcome.job_id)
        if (
            job is None
            or job.state is not JobState.RUNNING
            or job.attempt != outcome.attempt
            or job.locked_by != self.worker_id
        ):
            return None
        error = ErrorEntry(
            at=time.time(),
            attempt=job.attempt,
            type="DataRejected",
            message=storable_text(
                f"the database refused to record this attempt's {outcome.kind.value} outcome: {exc}"
            ),
        )
        # Another attempt may return a result the database takes; a refused failure would
        # only be refused again.
        retryable = outcome.kind is OutcomeKind.COMPLETED
        replacement = failure(self.kinds.find(job.kind), job, error, retryable=retryable)
        log.error(
            "job outcome refused by the database; recorded as a failed attempt",
            worker_id=self.worker_id,
            job_id=job.id,
            queue=job.queue,
            attempt=job.attempt,
            outcome=outcome.kind.value,
            recorded=replacement.kind.value,
            error=str(exc),
        )
        return replacement
