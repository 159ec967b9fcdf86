"""The worker's side of the PostgreSQL store: the exchange (record outcomes and progress,
claim, offer free slots, rescue; one statement), heartbeats and adoption."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import orjson

from conveyor.store.base import (
    DataRejected,
    JobsAvailable,
    Notice,
    Offers,
    StoreError,
    TransactionRolledBack,
)
from conveyor.store.fairness import AMONG, Turns
from conveyor.store.postgres.connection import Conn, Database
from conveyor.store.postgres.enqueue import dumps
from conveyor.store.postgres.listener import notify_queues
from conveyor.store.postgres.rows import JOBS, time_or_none
from conveyor.store.records import (
    ClaimRequest,
    Job,
    JobState,
    LeaseStatus,
    Outcome,
    OutcomeKind,
    Progress,
    RescueResult,
    SettleResult,
)
from conveyor.store.sqlfile import load_statements

_SQL = load_statements(__package__, "$", "exchange.sql")

_ENDING = frozenset({OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.CANCELLED})


class Limits:
    """The queues with a cluster-wide limit, as this store last heard of them: a claim in
    one first locks the queue's row, so the running count it reads cannot be stale."""

    def __init__(self) -> None:
        self.queues: set[str] = set()

    async def load(self, conn: Conn) -> None:
        rows = await conn.fetch(_SQL["limited_queues"].sql)
        self.queues = {r["name"] for r in rows}


class Exchange:
    """Runs the exchange statement (see exchange.sql) and what its answer asks for. With
    ``announce`` (events on) the statement writes the events of the outcomes and rescues
    it records, and ``announce`` is called after a commit that wrote some."""

    def __init__(
        self,
        db: Database,
        publish: Callable[[Notice], None],
        limits: Limits,
        offer_key: Callable[[], int | None],
        *,
        hears_limits: bool,
        announce: Callable[[], None] | None,
    ) -> None:
        self._db = db
        self._publish = publish
        self._limits = limits
        self._offer_key = offer_key
        self._hears_limits = hears_limits
        self._announce = announce
        self._turns = Turns()

    async def settle_and_claim(
        self,
        outcomes: Sequence[Outcome],
        progress: Sequence[Progress],
        worker_id: str,
        claim: ClaimRequest | None,
        rescue_limit: int,
        offers: Offers | None = None,
        *,
        fill: bool = False,
    ) -> SettleResult:
        """:meth:`conveyor.store.base.HandoffQueue.settle_and_claim`; ``rescue_limit`` 0:
        no rescue; ``offers`` None: the claim offers nothing and offers stay as they are;
        ``fill``: the claim walks on where the tenants' shares leave it short (the queues
        another claim named in fill_in)."""
        queues = list(claim.slots) if claim is not None else []
        # Never a claimed queue's offer: the claim sets it, and one statement must not
        # change a row twice.
        freed = {q: n for q, n in offers.freed.items() if q not in queues} if offers else {}
        withdraw = offers is not None and offers.withdraw
        try:
            reports = _reports(outcomes, progress)
        except orjson.JSONEncodeError as exc:
            raise DataRejected(f"an outcome could not be encoded: {exc}") from exc
        # A queue that held one tenant takes the short cut (claim_lone in exchange.sql); a
        # capped tenant's room is counted under the queue's lock, by the fair claim.
        lock = self._lock_needed(queues)
        lone = not (lock or fill) and all(len(self._turns.passes(q)) <= 1 for q in queues)
        discover = fill or self._turns.to_discover(queues)
        values = {
            **self._claim(
                claim, queues, worker_id, offers is not None, among=None if discover else AMONG
            ),
            "discover": discover,
            **reports,
            "rescue": rescue_limit > 0,
            "rescue_limit": rescue_limit,
            "freed_queues": list(freed),
            "freed_slots": list(freed.values()),
            "withdraw": withdraw,
            "locked_queues": [],
            "events": self._announce is not None,
        }
        claim_only = not (outcomes or progress or rescue_limit or freed or withdraw)
        variant = "_lone" if lone else "_fill" if fill else ""

        async def run(conn: Conn) -> list[asyncpg.Record]:
            if not lock:
                stmt = _SQL[("claim" if claim_only else "exchange") + variant]
                return await conn.fetch(stmt.sql, *stmt.args(values))
            async with conn.transaction():
                locking = _SQL["lock_limited_queues"]
                locked = await conn.fetch(locking.sql, *locking.args(values))
                values["locked_queues"] = [r["name"] for r in locked]
                exchange = _SQL["exchange" + variant]
                return await conn.fetch(exchange.sql, *exchange.args(values))

        try:
            rows = await self._db.run(run)
        except asyncpg.PostgresError as exc:
            # Refused data is DataRejected already, and a deadlock TransactionRolledBack
            # (one statement: nothing was recorded and nothing claimed); any other refusal
            # (a statement timeout) is retried by the worker after a pause.
            raise StoreError(self._db.failure(exc)) from exc
        claimed, rescued, summary = _split(rows)
        got = Counter(j.queue for j in claimed)
        self._turns.learn(
            queues,
            zip(
                summary["fair_queues"],
                summary["fair_tenants"],
                summary["fair_passes"],
                strict=True,
            ),
            found=lone or discover,
            full=[q for q in queues if claim is not None and got[q] >= claim.slots[q]],
        )
        next_run_at = time_or_none(summary["next_run_at"])
        if claim is not None:
            again: list[tuple[dict[str, int], bool]] = []
            unlocked = list(summary["unlocked_in"])
            if unlocked:
                # Queues with a limit this store had not heard of claimed nothing (the
                # notice is late, or was missed while LISTEN was down): claim them again,
                # locked.
                self._limits.queues.update(unlocked)
                again.append(({q: claim.slots[q] for q in unlocked}, False))
            if summary["fill_in"]:
                # The tenants' shares (or the one tenant the claim expected) left these
                # queues short with more due: what is missing is claimed now, not at the
                # next exchange.
                again.append(({q: claim.slots[q] - got[q] for q in summary["fill_in"]}, True))
            for slots, fill_more in again:
                # With offers if the first pass had them, as it would have: a limited
                # queue offers nothing, and the worker's old offers in it are taken back.
                try:
                    more = await self.settle_and_claim(
                        (),
                        (),
                        worker_id,
                        replace(claim, slots=slots),
                        0,
                        Offers() if offers is not None else None,
                        fill=fill_more,
                    )
                except TransactionRolledBack:
                    # The first pass is committed: what it recorded and claimed must
                    # reach the worker, so that TransactionRolledBack out of this call
                    # always means nothing stands. The queues left short hold due jobs:
                    # say so, and the worker claims them again at once.
                    next_run_at = time.time()
                    continue
                claimed.extend(more.claimed)
                if more.next_run_at is not None:
                    next_run_at = min(next_run_at or more.next_run_at, more.next_run_at)
        done = set(zip(summary["settled_ids"], summary["settled_attempts"], strict=True))
        applied = tuple((o.job_id, o.attempt) in done for o in outcomes)
        if self._announce is not None and (
            rescued
            or any(
                ok and o.kind is not OutcomeKind.RELEASED
                for o, ok in zip(outcomes, applied, strict=True)
            )
        ):
            self._announce()
        wake = set(summary["requeued_in"])
        wake.update(j.queue for j in rescued if j.state is JobState.QUEUED)
        wake.update(
            o.queue
            for o, ok in zip(outcomes, applied, strict=True)
            if ok and o.kind in _ENDING and o.queue in self._limits.queues
        )
        if wake:
            await self._db.run(lambda conn: notify_queues(conn, wake))
            self._publish(JobsAvailable(frozenset(wake)))
        claimed.sort(key=lambda j: (j.priority, j.run_at, j.id))
        rescue_result = (
            RescueResult.from_rows((j.id, j.state.value, j.queue) for j in rescued)
            if rescue_limit > 0
            else None
        )
        return SettleResult(
            applied, tuple(claimed), next_run_at, rescue_result, frozenset(summary["offered_in"])
        )

    def _lock_needed(self, queues: Collection[str]) -> bool:
        """Whether a claim of ``queues`` runs under their rows' lock: a queue with a
        cluster-wide limit or a tenant's cap. Without LISTEN this store cannot hear of new
        limits: it always locks."""
        return bool(self._limits.queues.intersection(queues)) or bool(
            queues and not self._hears_limits
        )

    def _claim(
        self,
        claim: ClaimRequest | None,
        queues: list[str],
        worker_id: str,
        offer: bool,
        *,
        among: int | None = None,
    ) -> dict[str, Any]:
        """The claim's parameters (the claim statement takes these alone); with ``offer``,
        what the claim leaves free is offered under the LISTEN connection's key."""
        if claim is None:
            return {
                "queues": [],
                "slots": [],
                "worker_id": worker_id,
                "lease_s": 0.0,
                "offer_key": None,
                "kinds": [],
                "lone_tenants": [],
                **self._turns.values(()),
            }
        return {
            **self._turns.values(queues, among=among),
            "queues": queues,
            "slots": [claim.slots[q] for q in queues],
            "worker_id": worker_id,
            "lease_s": claim.lease_s,
            "offer_key": self._offer_key() if offer else None,
            "kinds": list(claim.kinds),
            "lone_tenants": [next(iter(self._turns.passes(q)), None) for q in queues],
        }

    async def heartbeat(
        self,
        worker_id: str,
        jobs: dict[int, int],
        lease_s: float,
        renew: bool,
        memory_mb: float | None,
    ) -> LeaseStatus:
        stmt = _SQL["heartbeat"]
        args = stmt.args(
            {
                "worker_id": worker_id,
                "job_ids": list(jobs),
                "attempts": list(jobs.values()),
                "lease_s": lease_s,
                "renew": renew,
                "memory_mb": memory_mb,
            }
        )
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args))
        return LeaseStatus(
            frozenset(r["id"] for r in rows),
            frozenset(r["id"] for r in rows if r["cancel_requested"]),
        )

    async def adopt(self, worker_id: str, known: Collection[int]) -> list[Job]:
        stmt = _SQL["adopt"]
        args = stmt.args({"worker_id": worker_id, "known": list(known)})
        rows = await self._db.run(lambda conn: conn.fetch(stmt.sql, *args))
        return [JOBS.decode(r, 0) for r in rows]

    async def rescue(self, limit: int) -> RescueResult:
        result = await self.settle_and_claim((), (), "", None, limit)
        return result.rescued or RescueResult((), (), ())


def _reports(outcomes: Sequence[Outcome], progress: Sequence[Progress]) -> dict[str, Any]:
    """The parameters of the outcomes and progress reports to record, column by column."""
    return {
        "outcome_ids": [o.job_id for o in outcomes],
        "outcome_attempts": [o.attempt for o in outcomes],
        "outcome_kinds": [o.kind.value for o in outcomes],
        "outcome_results": [_result_text(o) for o in outcomes],
        "outcome_errors": [
            dumps(o.error.to_json()) if o.error is not None else None for o in outcomes
        ],
        "outcome_delays": [o.retry_in_s for o in outcomes],
        "progress_ids": [p.job_id for p in progress],
        "progress_attempts": [p.attempt for p in progress],
        "progress_fractions": [p.fraction for p in progress],
        "progress_messages": [p.message for p in progress],
    }


def _result_text(o: Outcome) -> str | None:
    if o.kind is not OutcomeKind.COMPLETED:
        return None
    return o.result_json if o.result_json is not None else dumps(o.result)


def _split(rows: Sequence[asyncpg.Record]) -> tuple[list[Job], list[Job], asyncpg.Record]:
    """The claimed jobs, the rescued jobs and the summary row of an exchange: each row is
    tagged (``what``), and the job's columns follow the tag."""
    claimed: list[Job] = []
    rescued: list[Job] = []
    summary: asyncpg.Record | None = None
    decode = JOBS.decode
    for row in rows:
        what = row["what"]
        if what == "claimed":
            claimed.append(decode(row, 1))
        elif what == "rescued":
            rescued.append(decode(row, 1))
        else:
            summary = row
    if summary is None:
        raise StoreError("the exchange statement returned no summary row")
    return claimed, rescued, summary
