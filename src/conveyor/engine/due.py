"""Which of a worker's queues may hold due jobs: what its claims ask for.

A claim that comes back short clears its queues, so an idle worker does not claim again
and again for nothing; a notice, the due time of a scheduled job, the safety poll or the
memory falling below its limit marks them again.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from conveyor.store.records import ClaimRequest, SettleResult


class DueQueues:
    def __init__(self, queues: Collection[str]) -> None:
        self._served = frozenset(queues)
        self.maybe: set[str] = set(queues)
        """Queues that may hold due jobs."""
        self.notices = 0
        """Counts the notices that marked queues: a claim's "drained" verdict must not
        erase a notice that arrived while it was in flight."""
        self._next_due: float | None = None
        """The earliest ``run_at`` (the store's wall clock) of a scheduled job learnt."""

    def mark_all(self) -> None:
        self.maybe.update(self._served)

    def notice(self, queues: frozenset[str] | None) -> bool:
        """Jobs may be available in ``queues`` (None: any); True if it concerns a queue
        served here."""
        hit = self._served if queues is None else self._served & queues
        if not hit:
            return False
        self.maybe |= hit
        self.notices += 1
        return True

    def slots(self, free: dict[str, int]) -> dict[str, int]:
        """The free slots worth claiming for."""
        return {q: n for q, n in free.items() if q in self.maybe}

    def learn(self, claim: ClaimRequest, result: SettleResult, *, notices_before: int) -> None:
        """Mark the queues a claim drained, unless a notice came in meanwhile, and keep
        the earliest time a scheduled job falls due."""
        if self.notices == notices_before:
            got: dict[str, int] = {}
            for job in result.claimed:
                got[job.queue] = got.get(job.queue, 0) + 1
            for queue, wanted in claim.slots.items():
                if got.get(queue, 0) < wanted:
                    self.maybe.discard(queue)
        # The answer covers only the queues of this claim: keep an earlier due time learnt
        # for another queue. A stale one costs one empty claim, after which polled()
        # forgets it; dropping a live one would leave its job waiting for the safety poll.
        upcoming = result.next_run_at
        if upcoming is not None and (self._next_due is None or upcoming < self._next_due):
            self._next_due = upcoming

    def poll_in(self, timeout: float) -> float:
        """Seconds until the next poll: ``timeout``, or sooner if a scheduled job falls
        due before."""
        if self._next_due is None:
            return timeout
        return min(timeout, max(0.0, self._next_due - time.time()))

    def polled(self) -> None:
        """The poll's time came: every queue may hold due jobs again."""
        self.mark_all()
        self._next_due = None
