"""How long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass

from conveyor.engine.limits import MAX_DELAY_S


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter, capped.

    The delay before attempt ``n + 1`` is drawn uniformly from
    ``[0, min(cap, base * factor ** (n - 1))]``. Full jitter spreads the retries of jobs
    that failed together (an outage) instead of sending them back all at once. With
    ``jitter=False`` the delay is the upper bound itself, for predictable schedules.
    """

    base: float = 5.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        # Written so that NaN fails too.
        if not (
            0 <= self.base <= MAX_DELAY_S and 0 <= self.cap <= MAX_DELAY_S and self.factor >= 1
        ):
            raise ValueError(
                f"Backoff(base={self.base}, factor={self.factor}, cap={self.cap}): base and "
                f"cap must be seconds from 0 to {MAX_DELAY_S:.0f} (10 years) and factor >= 1"
            )

    def ceiling(self, attempt: int) -> float:
        """The longest delay after failed attempt number ``attempt`` (1-based)."""
        if self.base == 0:
            return 0.0
        try:
            growth = self.factor ** max(0, attempt - 1)
        except OverflowError:
            # Past the largest float (after ~1000 doublings, far fewer for a bigger
            # factor): the cap was reached long ago.
            return float(self.cap)
        return float(min(self.cap, self.base * growth))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)
