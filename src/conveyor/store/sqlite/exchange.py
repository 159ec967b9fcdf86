"""The worker's round trips: settle and claim, heartbeats, rescue, adoption (each run on
the store's thread, inside the transaction the store opened)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from conveyor.store.fairness import AMONG, Candidate, Turns, chosen, share, take_turns
from conveyor.store.records import (
    ClaimRequest,
    EventType,
    Job,
    LeaseStatus,
    Outcome,
    OutcomeKind,
    Progress,
    RescueResult,
    SettleResult,
)
from conveyor.store.sqlite import events
from conveyor.store.sqlite.queries import execute, ordered
from conveyor.store.sqlite.rows import JOB, dumps

RESCUE_LIMIT = 1000
"""Expired leases a rescue riding on an exchange takes at most."""

_GUARD = ("id", "attempt", "worker_id")
_PROGRESS = ordered("progress", "fraction", "message", *_GUARD)
_COMPLETE = ordered("complete", "result", "now", *_GUARD)
_RETRY_LATER = ordered("retry_later", "now", "delay", "error", *_GUARD)
_FAIL = ordered("fail", "now", "error", *_GUARD)
_CANCELLED = ordered("cancelled", "now", *_GUARD)
_RELEASE = ordered("release", *_GUARD)
_SETTINGS_FOR = ordered("queue_settings_for", "queue")
_COUNT_RUNNING = ordered("count_running", "queue")
_HAS_TENANT_CAPS = ordered("has_tenant_caps", "queue")

_REQUEUEING = frozenset({OutcomeKind.RETRY, OutcomeKind.RELEASED})


def settle_and_claim(
    conn: sqlite3.Connection,
    now: float,
    outcomes: Sequence[Outcome],
    progress: Sequence[Progress],
    worker_id: str,
    claim: ClaimRequest | None,
    rescue: bool,
    turns: Turns,
    log: bool,
) -> tuple[SettleResult, frozenset[str], bool]:
    """Record reports, rescue if asked, claim; also the queues to wake, and whether
    events were written (with ``log``: those of the outcomes and the rescue)."""
    # Progress first: a job's last report may ride with its outcome, and must be
    # recorded while the job is still running.
    for p in progress:
        conn.execute(_PROGRESS, (p.fraction, p.message, p.job_id, p.attempt, worker_id))
    applied = tuple([_apply_outcome(conn, now, worker_id, o) for o in outcomes])
    wake = _queues_to_wake(conn, outcomes, applied)
    entries = _outcome_events(now, outcomes, applied) if log else []
    rescued = None
    if rescue:
        rescued, requeued_in, rescue_entries = rescue_expired(conn, now, RESCUE_LIMIT)
        wake |= requeued_in
        if log:
            entries += rescue_entries
    events.record(conn, now, entries)
    claimed: list[Job] = []
    next_run_at: float | None = None
    if claim is not None:
        for queue, limit in claim.slots.items():
            jobs, upcoming = _claim_queue(conn, now, claim, turns, queue, limit)
            claimed.extend(jobs)
            if upcoming is not None and (next_run_at is None or upcoming < next_run_at):
                next_run_at = upcoming
    return SettleResult(applied, tuple(claimed), next_run_at, rescued), wake, bool(entries)


def _apply_outcome(conn: sqlite3.Connection, now: float, worker_id: str, o: Outcome) -> bool:
    guard = (o.job_id, o.attempt, worker_id)
    kind = o.kind
    if kind is OutcomeKind.COMPLETED:
        result = o.result_json if o.result_json is not None else dumps(o.result)
        cursor = conn.execute(_COMPLETE, (result, now, *guard))
    elif kind is OutcomeKind.RELEASED:
        cursor = conn.execute(_RELEASE, guard)
    elif kind is OutcomeKind.CANCELLED:
        cursor = conn.execute(_CANCELLED, (now, *guard))
    else:
        if o.error is None:
            raise ValueError(f"outcome {kind} of job {o.job_id} needs an error entry")
        error = dumps(o.error.to_json())
        if kind is OutcomeKind.RETRY:
            cursor = conn.execute(_RETRY_LATER, (now, o.retry_in_s, error, *guard))
        else:
            cursor = conn.execute(_FAIL, (now, error, *guard))
    return cursor.rowcount == 1


def _outcome_events(
    now: float, outcomes: Sequence[Outcome], applied: Sequence[bool]
) -> list[events.Entry]:
    """The events of the outcomes applied; a released job (handed back) writes none."""
    entries: list[events.Entry] = []
    for o, ok in zip(outcomes, applied, strict=True):
        kind = o.kind
        if not ok or kind is OutcomeKind.RELEASED:
            continue
        if kind is OutcomeKind.COMPLETED:
            entries.append(events.entry(o.job_id, EventType.COMPLETED, {}))
        elif kind is OutcomeKind.CANCELLED:
            entries.append(events.entry(o.job_id, EventType.CANCELLED, {}))
        elif o.error is not None:  # a retry or a failure: _apply_outcome checked it has one
            error = events.error_body(o.error)
            if kind is OutcomeKind.RETRY:
                # The same sum as retry_later's run_at: the body tells the row's time.
                body = {"error": error, "run_at": now + o.retry_in_s}
                entries.append(events.entry(o.job_id, EventType.RETRYING, body))
            else:
                entries.append(events.entry(o.job_id, EventType.FAILED, {"error": error}))
    return entries


def _queues_to_wake(
    conn: sqlite3.Connection, outcomes: Sequence[Outcome], applied: Sequence[bool]
) -> frozenset[str]:
    """Queues where a job may now be claimable: a job went back to the queue, or a job of
    a queue with a cluster-wide limit or a tenant's cap stopped running and freed a slot."""
    wake: set[str] = set()
    ended: set[str] = set()
    for outcome, ok in zip(outcomes, applied, strict=True):
        if ok:
            (wake if outcome.kind in _REQUEUEING else ended).add(outcome.queue)
    for queue in ended - wake:
        settings = conn.execute(_SETTINGS_FOR, (queue,)).fetchone()
        if (settings is not None and settings[1] is not None) or conn.execute(
            _HAS_TENANT_CAPS, (queue,)
        ).fetchone()[0]:
            wake.add(queue)
    return frozenset(wake)


def _claim_queue(
    conn: sqlite3.Connection,
    now: float,
    claim: ClaimRequest,
    turns: Turns,
    queue: str,
    limit: int,
) -> tuple[list[Job], float | None]:
    """Claim up to ``limit`` due jobs of ``queue`` of the claim's kinds, the queue's
    tenants in turn (:mod:`conveyor.store.fairness`); also the next ``run_at`` of such a
    job when the claim came back short. The write lock is held, so the running counts
    read here cannot change before the claim."""
    settings = conn.execute(_SETTINGS_FOR, (queue,)).fetchone()
    if settings is not None:
        paused, cluster_limit = settings
        if paused:
            return [], None
        if cluster_limit is not None:
            running = conn.execute(_COUNT_RUNNING, (queue,)).fetchone()[0]
            limit = min(limit, cluster_limit - running)
    values: dict[str, Any] = {
        "worker_id": claim.worker_id,
        "now": now,
        "lease_s": claim.lease_s,
        "queue": queue,
        "kinds": dumps(claim.kinds),
    }
    jobs: list[Job] = []
    if limit > 0:
        rows = _claim_lone(conn, values, turns, limit)
        if not rows:
            ids = _choose(conn, values, claim.kinds, turns, limit)
            if ids:
                values["ids"] = dumps(ids)
                rows = execute(conn, "claim", values).fetchall()
        jobs = sorted(map(JOB.decode, rows), key=lambda j: (j.priority, j.run_at, j.id))
        if len(jobs) == limit:
            return jobs, None
    upcoming = execute(conn, "next_run_at", values).fetchone()[0]
    return jobs, upcoming


def _claim_lone(
    conn: sqlite3.Connection, values: dict[str, Any], turns: Turns, limit: int
) -> list[Any]:
    """The claim of a queue whose last claim found one tenant, where no tenant is capped
    (``claim_lone`` in queries.sql): the rows claimed, or none, and the fair claim runs,
    when the queue holds another tenant or that tenant has nothing due. The tenant's pass
    stays the queue's vt: alone, its turns are all its own."""
    queue = values["queue"]
    known = turns.passes(queue)
    if len(known) != 1 or execute(conn, "has_tenant_caps", values).fetchone()[0]:
        return []
    [tenant] = known
    rows = execute(conn, "claim_lone", {**values, "tenant_id": tenant, "limit": limit}).fetchall()
    if rows:
        vt = turns.vt(queue)
        turns.learn(
            (queue,),
            ((queue, tenant, vt),),
            found=True,
            full=(queue,) if len(rows) >= limit else (),
        )
    return rows


def _choose(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    kinds: Sequence[str],
    turns: Turns,
    limit: int,
    *,
    discover: bool | None = None,
) -> list[int]:
    """The ids of the jobs a claim of ``limit`` takes: the share of candidates per kind of
    each tenant the claim serves first (:func:`~conveyor.store.fairness.chosen`); where
    the shares left the claim short, the tenants whose share came back full and the
    tenants left out are walked in pass order, each for what is still missing (within its
    room); merged in turn order. Fewer than ``limit`` only when the
    queue has no more due jobs the claim may take.

    The tenants are looked for (a skip scan of the claim index) as
    :meth:`~conveyor.store.fairness.Turns.to_discover` says; else the claim chooses among
    the :data:`~conveyor.store.fairness.AMONG` it knows furthest behind, and looks at once
    if those leave it short."""
    queue = values["queue"]
    if discover is None:
        discover = turns.to_discover((queue,))
    capped: dict[str, int] = {}
    weights: dict[str, int] = {}
    for tenant, concurrency, weight in execute(conn, "tenant_limits_for", values):
        if concurrency is not None:
            capped[tenant] = concurrency
        if weight is not None:
            weights[tenant] = weight
    tenants: dict[str, list[str]] = {}
    among = [t for t, _ in turns.among(queue, AMONG)]
    for kind in kinds:
        if discover:
            found = execute(conn, "queue_tenants", {**values, "kind": kind}).fetchall()
            tenants[kind] = [t for (t,) in found]
        else:
            tenants[kind] = among
    active = {t for found in tenants.values() for t in found}
    rooms = {t: limit for t in active}
    for tenant in active & capped.keys():
        running = execute(conn, "count_running_of_tenant", {**values, "tenant_id": tenant})
        rooms[tenant] = max(0, min(limit, capped[tenant] - running.fetchone()[0]))
    total = sum(weights.get(t, 1) for t in active)
    shares = {t: share(limit, weights.get(t, 1), total, rooms[t]) for t in active}
    vt, known = turns.vt(queue), turns.passes(queue)
    bases = {t: known.get(t, vt) for t in active}
    first = set(chosen(limit, shares, bases))
    candidates, full = _read(conn, values, tenants, first, shares, rooms)
    missing = limit - len(candidates)
    if missing > 0:
        # Walked in pass order, each for what is still missing within the room the
        # tenant's walks of every kind left: a tenant left out may hold all of it,
        # whatever its share.
        walks: list[tuple[float, str, str, Candidate | None]] = [
            (bases[tenant], tenant, kind, last) for kind, tenant, last in full
        ]
        walks.extend(
            (bases[tenant], tenant, kind, None)
            for kind, found in tenants.items()
            for tenant in found
            if tenant not in first and rooms[tenant] > 0
        )
        walks.sort(key=lambda w: w[:3])
        taken = Counter(c.tenant_id for c in candidates)
        for _base, tenant, kind, last in walks:
            if missing <= 0:
                break
            more = min(missing, rooms[tenant] - taken[tenant])
            got = _candidates(conn, values, kind, tenant, more, last)
            candidates.extend(got)
            taken[tenant] += len(got)
            missing -= len(got)
    if len(candidates) < limit and not discover:
        # The tenants known may have run out, and a newcomer is not among them.
        return _choose(conn, values, kinds, turns, limit, discover=True)
    return take_turns(limit, candidates, weights, rooms, turns, queue, found=discover)


def _read(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    tenants: Mapping[str, Sequence[str]],
    which: Collection[str],
    shares: Mapping[str, int],
    rooms: Mapping[str, int],
) -> tuple[list[Candidate], list[tuple[str, str, Candidate]]]:
    """The share of candidates per kind of each tenant of ``which``, and the walks that
    came back full with room for more (kind, tenant, last candidate)."""
    candidates: list[Candidate] = []
    full: list[tuple[str, str, Candidate]] = []
    for kind, found in tenants.items():
        # Tenants of one share are read in one statement: with equal weights, all of them.
        by_share: dict[int, list[str]] = {}
        for tenant in found:
            if tenant in which and shares[tenant] > 0:
                by_share.setdefault(shares[tenant], []).append(tenant)
        for n, group in by_share.items():
            got = _candidates_of(conn, values, kind, group, n)
            candidates.extend(got)
            full.extend(
                (kind, tenant, last)
                for tenant, (count, last) in _walks(got).items()
                if count == n < rooms[tenant]
            )
    return candidates, full


def _walks(got: list[Candidate]) -> dict[str, tuple[int, Candidate]]:
    """Per tenant, how many candidates came back and the last in claim order."""
    walks: dict[str, tuple[int, Candidate]] = {}
    for c in got:
        count, last = walks.get(c.tenant_id, (0, c))
        later = (c.priority, c.run_at, c.id) > (last.priority, last.run_at, last.id)
        walks[c.tenant_id] = (count + 1, c if later else last)
    return walks


def _candidates_of(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    kind: str,
    tenants: list[str],
    n: int,
) -> list[Candidate]:
    """The first ``n`` candidates of ``kind`` of each of ``tenants``."""
    params = {**values, "kind": kind, "tenants": dumps(tenants), "limit": n}
    return [Candidate(*row) for row in execute(conn, "tenants_candidates", params)]


def _candidates(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    kind: str,
    tenant: str,
    n: int,
    after: Candidate | None,
) -> list[Candidate]:
    if n <= 0:
        return []
    rows = execute(
        conn,
        "tenant_candidates",
        {
            **values,
            "kind": kind,
            "tenant_id": tenant,
            "limit": n,
            "after_priority": after.priority if after else 0,
            "after_run_at": after.run_at if after else 0.0,
            "after_id": after.id if after else 0,
        },
    )
    return [Candidate(*row) for row in rows]


def rescue_expired(
    conn: sqlite3.Connection, now: float, limit: int
) -> tuple[RescueResult, frozenset[str], list[events.Entry]]:
    """Rescue expired leases and forget expired workers; also the queues requeued into,
    and the events of the jobs rescued (for the caller to write, with its others)."""
    values = {"now": now, "limit": limit}
    rows = execute(conn, "rescue", values).fetchall()
    execute(conn, "forget_workers", values)
    entries: list[events.Entry] = []
    for job_id, state, _queue, run_at, error_type, message in rows:
        error = {"type": error_type, "message": message}
        if state == "queued":
            body = {"error": error, "run_at": run_at}
            entries.append(events.entry(job_id, EventType.RETRYING, body))
        elif state == "failed":
            entries.append(events.entry(job_id, EventType.FAILED, {"error": error}))
        else:
            entries.append(events.entry(job_id, EventType.CANCELLED, {}))
    result = RescueResult.from_rows(row[:3] for row in rows)
    return result, frozenset(row[2] for row in rows if row[1] == "queued"), entries


def leases(
    conn: sqlite3.Connection,
    now: float,
    worker_id: str,
    jobs: Mapping[int, int],
    lease_s: float,
    renew: bool,
    memory_mb: float | None,
) -> LeaseStatus:
    """Which of ``jobs`` (id -> attempt) still run under the worker, which have a cancel
    request; with ``renew``, their leases and the worker's registration extended."""
    values = {"worker_id": worker_id, "now": now, "lease_s": lease_s, "memory_mb": memory_mb}
    held: set[int] = set()
    cancel: set[int] = set()
    for job_id, attempt, cancel_requested in execute(conn, "leases_held", values):
        if jobs.get(job_id) == attempt:
            held.add(job_id)
            if cancel_requested:
                cancel.add(job_id)
    if renew:
        values["ids"] = dumps(sorted(held))
        execute(conn, "renew_leases", values)
        execute(conn, "renew_worker", values)
    return LeaseStatus(frozenset(held), frozenset(cancel))


def unknown_jobs(
    conn: sqlite3.Connection, now: float, worker_id: str, known: Collection[int]
) -> list[Job]:
    """Jobs running under ``worker_id`` other than ``known``."""
    values = {"worker_id": worker_id, "known": dumps(list(known))}
    return [JOB.decode(row) for row in execute(conn, "adopt", values)]
