"""Fair share between the tenants of a queue, the part both stores share: where each
tenant stands in a store's claims, and the rows of ``conveyor_tenant_limits``.

Claims take a queue's tenants in turn by stride scheduling: a tenant's k-th job in a claim
ranks at the tenant's pass plus k / weight, and a claim of n takes the first n by rank
(equal ranks go to the tenant further behind, then by priority, run_at, id). A tenant's
pass moves on by 1 / weight for each job it is given, so that over many claims, small or
large, tenants with jobs waiting are served in proportion to their weights, and strict
priority and FIFO hold within each tenant. A tenant that had no job in a queue's last
claim starts at the queue's vt (the least pass of those that had): it cannot bank turns
while idle, and a newcomer is served within the first claims. With more tenants than
about :data:`TENANTS_PER_CLAIM`, a claim reads only the tenants furthest behind, each at
least ``n // TENANTS_PER_CLAIM`` jobs, and those it left out keep their passes, so the
next claim serves them. Where those shares leave a claim short (the tenants it chose hold
fewer jobs), the claim walks on, in pass order, those that may hold more and those it left
out, each for what is still missing within its cap: a claim returns fewer than ``n`` only
when no more jobs it may take are due.

The passes are kept in memory by each store (each worker process): none is written to
the database, so a claim pays nothing for them, and several workers each keep their own,
which shares fairly as each of them does.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from conveyor.store.columns import Column, Table
from conveyor.store.records import TenantLimits

TENANT_LIMITS: Table[TenantLimits] = Table(
    TenantLimits,
    (
        Column("queue"),
        Column("tenant_id"),
        Column("concurrency"),
        Column("rate"),
        Column("weight"),
    ),
)


class Turns:
    """The pass of each tenant that held candidates in each queue's last claim, and when
    each queue's tenants were last looked for."""

    def __init__(self) -> None:
        self._passes: dict[str, dict[str, float]] = {}
        self._found_at: dict[str, float] = {}
        self._full: set[str] = set()

    def to_discover(self, queues: Iterable[str]) -> bool:
        """Whether a claim of ``queues`` should look for their tenants again rather than
        take those it knows: one of them was last looked at :data:`DISCOVER_S` ago or
        more (or never), its last claim came back short, or it held one tenant or none (a
        queue of several tenants with jobs enough to keep the worker busy is the one
        where the look is worth saving)."""
        now = time.monotonic()
        return any(
            q not in self._full
            or len(self.passes(q)) <= 1
            or now - self._found_at.get(q, -math.inf) >= DISCOVER_S
            for q in queues
        )

    def passes(self, queue: str) -> Mapping[str, float]:
        return self._passes.get(queue, {})

    def vt(self, queue: str) -> float:
        """Where a tenant not seen in ``queue``'s last claim starts."""
        return min(self.passes(queue).values(), default=0.0)

    def among(self, queue: str, n: int) -> list[tuple[str, float]]:
        """The (tenant, pass) of the ``n`` tenants known of ``queue`` furthest behind."""
        return heapq.nsmallest(n, self.passes(queue).items(), key=lambda item: (item[1], item[0]))

    def values(
        self, queues: Sequence[str], *, among: int | None = None
    ) -> dict[str, list[str] | list[float] | int]:
        """The PostgreSQL claim's parameters for ``queues`` (see its exchange.sql):
        every tenant known of each, or with ``among`` only that many furthest behind (a
        claim that walks only the tenants it is given chooses among those)."""
        fair_queues: list[str] = []
        fair_tenants: list[str] = []
        fair_passes: list[float] = []
        for queue in queues:
            known = self.passes(queue).items() if among is None else self.among(queue, among)
            for tenant, at in known:
                fair_queues.append(queue)
                fair_tenants.append(tenant)
                fair_passes.append(at)
        return {
            "vts": [self.vt(q) for q in queues],
            "fair_queues": fair_queues,
            "fair_tenants": fair_tenants,
            "fair_passes": fair_passes,
            "tenants_per_claim": TENANTS_PER_CLAIM,
        }

    def learn(
        self,
        queues: Iterable[str],
        passes: Iterable[tuple[str, str, float]],
        *,
        found: bool,
        full: Collection[str] = (),
    ) -> None:
        """Keep the (queue, tenant, pass) a claim of ``queues`` left. ``found``: the
        claim looked for the queues' tenants, and a tenant of those queues not among the
        passes is forgotten (it starts at the vt when it comes back); else it walked the
        tenants it was given, and the others keep their passes. ``full``: the queues
        where it got all it asked for."""
        now = time.monotonic()
        for queue in queues:
            if found:
                self._passes.pop(queue, None)
                self._found_at[queue] = now
            if queue in full:
                self._full.add(queue)
            else:
                self._full.discard(queue)
        for queue, tenant, at in passes:
            self._passes.setdefault(queue, {})[tenant] = at


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due job a claim may take: its tenant and its place in the tenant's order."""

    id: int
    tenant_id: str
    priority: int
    run_at: float


DISCOVER_S = 0.05
"""How long a store claims among the tenants it knows of a queue before it
looks for the queue's tenants again (a descent of the claim index per tenant, the claim's
largest cost with many tenants): a tenant new to a queue of several waits that long at
most for its first turn. Only a queue whose last claim was full claims so: a claim left
short looks at once (its refill), and so does every claim of a queue whose last claim was
short (where the look is cheap beside the wait for jobs) or that held one tenant or none
(where it costs two descents)."""

AMONG = 20
"""How many of a queue's known tenants, those furthest behind, a claim among known
tenants is given: twice the most it serves (:data:`TENANTS_PER_CLAIM`), so that the
work of its turns does not grow with the tenants of the queue."""

TENANTS_PER_CLAIM = 10
"""About how many tenants one claim serves at most: each tenant a claim of ``n`` serves
gets at least ``n // TENANTS_PER_CLAIM`` jobs (and 1), so that with more tenants than that
a claim serves those furthest behind and the next claim the next ones. Fewer, longer walks
of the claim index: one job of each of 100 tenants per claim of 100 cost a third of the
throughput (docs/benchmarks.md)."""


def share(n: int, weight: int, total: int, room: int) -> int:
    """How many candidates a claim of ``n`` reads of a tenant of ``weight`` among
    tenants of ``total`` weight: ``ceil(n * weight / total)``, at least
    ``n // TENANTS_PER_CLAIM``, cut to the ``room`` its concurrency cap leaves."""
    least = max(1, n // TENANTS_PER_CLAIM)
    return min(room, n, max(least, math.ceil(n * weight / total)))


def chosen(n: int, shares: Mapping[str, int], bases: Mapping[str, float]) -> list[str]:
    """The tenants a claim of ``n`` walks first: those furthest behind (least base, then
    id), until their shares fill the claim."""
    out: list[str] = []
    filled = 0
    for tenant in sorted(shares, key=lambda t: (bases[t], t)):
        if filled >= n:
            break
        if shares[tenant] > 0:
            out.append(tenant)
            filled += shares[tenant]
    return out


def take_turns(
    n: int,
    candidates: Iterable[Candidate],
    weights: Mapping[str, int],
    rooms: Mapping[str, int],
    turns: Turns,
    queue: str,
    *,
    found: bool,
) -> list[int]:
    """The ids of the first ``n`` candidates in turn order, and the queue's passes
    learnt, for every tenant of ``rooms`` (those that hold jobs, or with ``found``
    false those the claim was given: one the claim left out keeps its place): the SQLite
    claim's merge (PostgreSQL's is the same in SQL)."""
    vt = turns.vt(queue)
    known = turns.passes(queue)
    by_tenant: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_tenant.setdefault(c.tenant_id, []).append(c)
    ranked: list[tuple[float, float, int, float, int, str]] = []
    for tenant, jobs in by_tenant.items():
        base = known.get(tenant, vt)
        weight = weights.get(tenant, 1)
        jobs.sort(key=lambda c: (c.priority, c.run_at, c.id))
        for k, c in enumerate(jobs[: rooms.get(tenant, n)], start=1):
            ranked.append((base + k / weight, base, c.priority, c.run_at, c.id, tenant))
    ranked.sort()
    taken = ranked[:n]
    passes = {t: known.get(t, vt) for t in (*rooms, *by_tenant)}
    # In rank order: each tenant ends at the rank of its last job taken.
    for rank, _base, _priority, _run_at, _id, tenant in taken:
        passes[tenant] = rank
    turns.learn(
        (queue,),
        ((queue, t, at) for t, at in passes.items()),
        found=found,
        full=(queue,) if len(taken) >= n else (),
    )
    return [row[4] for row in taken]
