-- The worker's statements on the PostgreSQL store: its exchange (settle and claim), the
-- claim alone, heartbeat and adoption. Parameters are named (:name); the clock is the
-- server's now(). Every statement that changes a running job is guarded on state, attempt
-- and owner.

-- name: exchange
-- A worker's whole exchange in one statement and one commit: record finished attempts
-- (:outcome_*) and progress (:progress_*), claim for free slots (:queues, :slots) jobs of
-- the kinds the worker runs (:kinds), update the worker's offers (:offer_key,
-- :freed_queues, :freed_slots, :withdraw) and, when :rescue, rescue expired leases and
-- forget expired workers and dead offers. The parts change disjoint rows — the worker's
-- reported running jobs, queued jobs, other running jobs — which is what lets them share
-- a statement. The claim walks first (see the lock order in exchange_head).
--
-- Claims take, per queue, the first n due jobs of the worker's kinds in priority, run_at,
-- id order, skipping rows another claimer has locked; n is cut to the free slots where a
-- cluster-wide limit is set (the caller has locked those queues' rows first, so the count
-- is exact). A limited queue the caller did not lock (:locked_queues lists those it
-- locked: its cache had not heard of the limit yet) claims nothing; the summary names it
-- in unlocked_in, and the caller claims it again under its lock.
--
-- Rows come back tagged: 'claimed' and 'rescued' rows carry the job; the one 'summary'
-- row carries the (id, attempt) of the recorded outcomes, the queues a recorded outcome
-- put a job back into, and next_run_at when the claim got fewer jobs than it could take.
--
-- With :events the recorded outcomes and the rescue write their events (settled_events,
-- rescued_events). No statement here NOTIFYs: a notifying commit holds a global lock
-- through its WAL flush, which would serialise every worker's commit; the store sends
-- the notices after the commit instead (announcer.py).
-- include: exchange_head
-- include: claim_walks
-- include: claim_fair
-- include: exchange_rest
-- include: exchange_summary

-- name: exchange_fill
-- The exchange with the fair claim's refill (claim_fill), for the queues the fair claim
-- named in fill_in; the exchange's parameters, the same rows back.
-- include: exchange_head
-- include: claim_walks
-- include: claim_fill
-- include: exchange_rest
-- include: exchange_summary

-- name: exchange_lone
-- The exchange with the claim of queues that held at most one tenant (claim_lone): for a
-- caller whose last claim found no second tenant in any of its queues. The exchange's
-- parameters and :lone_tenants; the same rows back.
-- include: exchange_head
-- include: claim_lone
-- include: exchange_rest
-- include: exchange_summary

-- name: claim
-- The exchange cut down to its claim, for a worker with nothing to report and no rescue
-- due: the pass an idle worker makes when a notice wakes it, so the one on the
-- enqueue-to-start path, where the full statement's parts that had nothing to do cost
-- time. The exchange's claim parameters; same rows back.
-- Only for queues the caller holds no lock on: a limited queue claims nothing and is named
-- in unlocked_in, as in the exchange.
-- include: claim_head
-- include: claim_walks
-- include: claim_fair
-- include: claim_summary

-- name: claim_fill
-- The claim cut down as above, with the fair claim's refill (claim_fill).
-- include: claim_head
-- include: claim_walks
-- include: claim_fill
-- include: claim_summary

-- name: claim_lone
-- The claim cut down as above, with the claim of queues that held at most one tenant.
-- include: claim_head
-- include: claim_lone
-- include: claim_summary

-- part: exchange_head
-- The exchange's outcomes, progress reports and the queues it claims in (wanted).
WITH RECURSIVE settled AS (
    UPDATE conveyor_jobs j
    SET state = CASE o.kind
            WHEN 'completed' THEN 'completed'
            WHEN 'failed' THEN 'failed'
            WHEN 'cancelled' THEN 'cancelled'
            ELSE 'queued'
        END,
        -- JSON travels as text: a driver cannot tell a JSON array from a nested SQL array.
        result = CASE WHEN o.kind = 'completed' THEN o.result::jsonb ELSE j.result END,
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(o.error::jsonb) END,
        finished_at = CASE WHEN o.kind IN ('completed', 'failed', 'cancelled') THEN now() END,
        run_at = CASE WHEN o.kind = 'retry' THEN now() + make_interval(secs => o.delay_s)
                      ELSE j.run_at END,
        attempt = CASE WHEN o.kind = 'released' THEN j.attempt - 1 ELSE j.attempt END,
        locked_by = CASE WHEN o.kind IN ('retry', 'released') THEN NULL ELSE j.locked_by END,
        started_at = CASE WHEN o.kind = 'released' THEN NULL ELSE j.started_at END,
        -- A report that rides with its job's outcome is the job's last one: it is
        -- recorded here, since the reported CTE must not change the same row.
        progress = CASE WHEN o.kind = 'completed' THEN 1.0
                        WHEN o.kind = 'released' THEN NULL
                        WHEN p.id IS NOT NULL THEN p.fraction ELSE j.progress END,
        progress_message = CASE WHEN o.kind = 'released' THEN NULL
                                WHEN p.id IS NOT NULL THEN p.message
                                ELSE j.progress_message END,
        lease_expires_at = NULL
    FROM unnest(:outcome_ids::bigint[], :outcome_attempts::int[], :outcome_kinds::text[],
                :outcome_results::text[], :outcome_errors::text[], :outcome_delays::float8[])
         AS o(id, attempt, kind, result, error, delay_s)
    LEFT JOIN unnest(:progress_ids::bigint[], :progress_attempts::int[],
                     :progress_fractions::float8[], :progress_messages::text[])
         AS p(id, attempt, fraction, message) ON p.id = o.id AND p.attempt = o.attempt
    WHERE j.id = o.id AND j.state = 'running' AND j.attempt = o.attempt AND j.locked_by = :worker_id
    RETURNING o.id, o.attempt, j.queue, o.kind, j.tenant_id, j.kind AS job_kind, j.run_at,
              o.error
),
-- The outcomes' events: job.retrying (the error's type and message, never its traceback,
-- and the new run_at), job.completed, job.failed (the error), job.cancelled; a released
-- job (the worker's shutdown) writes none.
settled_events AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body)
    SELECT s.tenant_id,
           CASE s.kind WHEN 'retry' THEN 'job.retrying' ELSE 'job.' || s.kind END,
           s.id, s.job_kind, s.queue, s.attempt,
           CASE s.kind
               WHEN 'retry' THEN jsonb_build_object(
                   'error', e.error, 'run_at', extract(epoch FROM s.run_at))
               WHEN 'failed' THEN jsonb_build_object('error', e.error)
               ELSE '{}'
           END
    FROM settled s
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.error IS NOT NULL THEN jsonb_build_object(
                   'type', s.error::jsonb -> 'type', 'message', s.error::jsonb -> 'message')
               END AS error
    ) e
    WHERE :events::boolean AND s.kind <> 'released'
),
reported AS (
    UPDATE conveyor_jobs j
    SET progress = p.fraction, progress_message = p.message
    FROM unnest(:progress_ids::bigint[], :progress_attempts::int[],
                :progress_fractions::float8[], :progress_messages::text[])
         AS p(id, attempt, fraction, message)
    WHERE j.id = p.id AND j.state = 'running' AND j.attempt = p.attempt AND j.locked_by = :worker_id
      AND p.id <> ALL(:outcome_ids::bigint[])
    RETURNING j.id
),
-- Lock order. The claim's walks run first (the answer's first rows are the claimed
-- jobs), the settle after. The settle may wait, for another claim that locked one of
-- these jobs in passing (see claim_walks), until that statement commits; a walk may wait
-- too, in PostgreSQL's follow of a row's newer versions, which SKIP LOCKED does not
-- cover. So two workers' exchanges can deadlock, rarely (one deadlock in three runs of
-- eight workers at concurrency 10 over 10 tenants, docs/benchmarks.md): PostgreSQL
-- breaks it after deadlock_timeout, and the worker runs the pass again at once. Settling
-- first avoided that, at a price paid in every exchange: a statement's walks then started
-- late on its snapshot, and locked in passing more of the jobs claimed since, so that the
-- other workers' settles waited for them (two workers lost a fifth of their throughput).
wanted AS (
    SELECT w.queue,
           CASE WHEN q.concurrency_limit IS NULL AND q.tenant_caps IS NOT TRUE THEN w.n
                WHEN NOT w.queue = ANY(:locked_queues::text[]) THEN 0
                WHEN q.concurrency_limit IS NULL THEN w.n
                ELSE least(w.n, q.concurrency_limit - (
                    SELECT count(*) FROM conveyor_jobs r
                    WHERE r.state = 'running' AND r.queue = w.queue))
           END AS n,
           (q.concurrency_limit IS NOT NULL OR q.tenant_caps)
               AND NOT w.queue = ANY(:locked_queues::text[]) AS unlocked,
           coalesce(q.concurrency_limit IS NOT NULL OR q.tenant_caps, false) AS limited,
           :kinds::text[] AS kinds, w.vt
    FROM unnest(:queues::text[], :slots::int[], :vts::float8[]) AS w(queue, n, vt)
    LEFT JOIN conveyor_queues q ON q.name = w.queue
    WHERE q.paused IS NOT TRUE
),

-- part: exchange_rest
-- The exchange's rescue and offers after the claim.
expired AS (
    -- Never a row the outcomes update: one statement must not change a row twice.
    SELECT id FROM conveyor_jobs
    WHERE :rescue::boolean AND state = 'running' AND lease_expires_at < now()
      AND id <> ALL(:outcome_ids::bigint[])
    LIMIT :rescue_limit
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE conveyor_jobs j
    SET state = CASE
            WHEN j.cancel_requested THEN 'cancelled'
            WHEN j.attempt >= j.max_attempts THEN 'failed'
            ELSE 'queued'
        END,
        finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts THEN now() END,
        errors = CASE
            WHEN j.cancel_requested THEN j.errors
            ELSE j.errors || jsonb_build_array(jsonb_build_object(
                'at', extract(epoch FROM now()), 'attempt', j.attempt, 'type', 'LeaseExpired',
                'message', 'worker ' || coalesce(j.locked_by, '?') || ' stopped renewing its lease',
                'traceback', NULL))
        END,
        locked_by = NULL,
        lease_expires_at = NULL
    WHERE j.id = ANY(ARRAY(SELECT id FROM expired))
    RETURNING j.*
),
-- The rescue's events: job.retrying (LeaseExpired, due again at once), job.failed,
-- job.cancelled.
rescued_events AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body)
    SELECT r.tenant_id,
           CASE r.state WHEN 'queued' THEN 'job.retrying' ELSE 'job.' || r.state END,
           r.id, r.kind, r.queue, r.attempt,
           CASE r.state
               WHEN 'cancelled' THEN '{}'
               ELSE jsonb_build_object('error', jsonb_build_object(
                        'type', 'LeaseExpired', 'message', r.errors -> -1 -> 'message'))
                    || CASE WHEN r.state = 'queued'
                            THEN jsonb_build_object('run_at', extract(epoch FROM r.run_at))
                            ELSE '{}' END
           END
    FROM rescued r
    WHERE :events::boolean
),
forgotten AS (
    DELETE FROM conveyor_workers WHERE :rescue::boolean AND expires_at < now()
),
-- Offers whose LISTEN connection is gone (a shared lock on the key is granted), and those
-- of expired workers. Never the caller's own: its offers change in this statement.
dead_offers AS (
    DELETE FROM conveyor_offers o
    WHERE :rescue::boolean AND o.worker_id <> :worker_id
      AND (pg_try_advisory_xact_lock_shared(o.lock_key)
           OR o.worker_id IN (SELECT id FROM conveyor_workers WHERE expires_at < now()))
),
-- Slots the caller's jobs freed in queues it waits on (:freed_queues, :freed_slots: never
-- a claimed queue), or all its offers taken back (:withdraw: it stops fetching).
freed AS (
    UPDATE conveyor_offers o SET slots = o.slots + f.n
    FROM unnest(:freed_queues::text[], :freed_slots::int[]) AS f(queue, n)
    WHERE o.worker_id = :worker_id AND o.queue = f.queue AND NOT :withdraw::boolean
),
withdrawn AS (
    DELETE FROM conveyor_offers WHERE :withdraw::boolean AND worker_id = :worker_id
),

-- part: exchange_summary
-- The exchange's answer: claimed and rescued rows, then the summary.
-- include: offers
-- include: claimed_rows
UNION ALL
SELECT 'rescued', r.*, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM rescued r
UNION ALL
SELECT 'summary', (NULL::conveyor_jobs).*,
       CASE WHEN (SELECT count(*) FROM claimed) < (SELECT coalesce(sum(greatest(n, 0)), 0) FROM wanted)
            THEN (
-- include: next_due
            )
       END,
       ARRAY(SELECT id FROM settled),
       ARRAY(SELECT attempt FROM settled),
       ARRAY(SELECT DISTINCT queue FROM settled WHERE kind IN ('retry', 'released')),
       ARRAY(SELECT queue FROM wanted WHERE unlocked),
       ARRAY(SELECT queue FROM offered),
-- include: passes_out

-- part: claim_head
-- The queues the claim alone claims in (wanted).
WITH RECURSIVE wanted AS (
    SELECT w.queue,
           CASE WHEN q.concurrency_limit IS NULL AND q.tenant_caps IS NOT TRUE THEN w.n
                ELSE 0 END AS n,
           coalesce(q.concurrency_limit IS NOT NULL OR q.tenant_caps, false) AS unlocked,
           coalesce(q.concurrency_limit IS NOT NULL OR q.tenant_caps, false) AS limited,
           :kinds::text[] AS kinds, w.vt
    FROM unnest(:queues::text[], :slots::int[], :vts::float8[]) AS w(queue, n, vt)
    LEFT JOIN conveyor_queues q ON q.name = w.queue
    WHERE q.paused IS NOT TRUE
),

-- part: claim_summary
-- The claim's answer: claimed rows, then the summary.
-- include: offers
-- include: claimed_rows
UNION ALL
SELECT 'summary', (NULL::conveyor_jobs).*,
       CASE WHEN (SELECT count(*) FROM claimed) < (SELECT coalesce(sum(n), 0) FROM wanted)
            THEN (
-- include: next_due
            )
       END,
       '{}', '{}', '{}',
       ARRAY(SELECT queue FROM wanted WHERE unlocked),
       ARRAY(SELECT queue FROM offered),
-- include: passes_out

-- part: claim_walks
-- The fair claim's walks, shared by claim_fair and claim_fill: per wanted queue (wanted:
-- queue, n, kinds, vt) up to n due jobs of those kinds, the tenants of the queue taken in
-- turn and strict priority, run_at, id order within each tenant, skipping rows another
-- claimer holds.
--
-- Turns are stride scheduling: a tenant's k-th job in this claim ranks at its pass plus
-- k / weight, and the first n by rank are taken. The caller keeps each tenant's pass
-- between claims (:fair_queues, :fair_tenants, :fair_passes; a tenant it does not know
-- starts at its queue's vt) and gets the new passes back in the summary. Equal ranks go
-- to the tenant further behind, then in claim order.
--
-- The tenants come from a skip scan of the claim index (one descent per tenant that holds
-- queued jobs of a kind) or from the caller (see active); each tenant's range is walked for its share of n
-- (ceil(n * weight / total weight), at least n / :tenants_per_claim, cut to the room its
-- concurrency cap leaves), locked: the tenants furthest behind first, until their shares
-- fill the claim (with many tenants a claim serves some of them, several jobs each, and
-- the next claim the next ones, rather than every one of them one job: fewer walks, and
-- fewer places of the index changed). A walk that meets a row its snapshot saw queued but
-- another worker claimed since locks that worker's running job before the recheck drops
-- it, until this statement commits (see the lock order in exchange_head). Candidates
-- locked but not taken stay locked only
-- until this statement commits; meanwhile other claimers skip them as they skip any row
-- being claimed (and a claim that leaves some untaken was full, so its worker claims
-- again).
-- The tenants of each (queue, kind): with :discover, those the skip scan finds; else
-- those the caller learnt from its last claims (:fair_queues, :fair_tenants), of every
-- kind. The skip scan costs a descent per tenant at every claim; the caller asks for it
-- at most every DISCOVER_S seconds (store/fairness.py) and in every refill, so that a
-- newcomer waits that long at most, and a tenant whose jobs ran out (its walks come back
-- empty, leaving the claim short) is dropped by the refill's skip scan.
found (queue, kind, n, tenant_id) AS (
    SELECT w.queue, wk.kind, w.n, (
        SELECT j.tenant_id FROM conveyor_jobs j
        WHERE j.state = 'queued' AND j.queue = w.queue AND j.kind = wk.kind
        ORDER BY j.tenant_id LIMIT 1)
    FROM wanted w CROSS JOIN unnest(w.kinds) AS wk(kind)
    WHERE w.n > 0 AND :discover::boolean
    UNION ALL
    SELECT a.queue, a.kind, a.n, (
        SELECT j.tenant_id FROM conveyor_jobs j
        WHERE j.state = 'queued' AND j.queue = a.queue AND j.kind = a.kind
          AND j.tenant_id > a.tenant_id
        ORDER BY j.tenant_id LIMIT 1)
    FROM found a WHERE a.tenant_id IS NOT NULL
),
active (queue, kind, n, tenant_id) AS (
    SELECT * FROM found
    UNION ALL
    SELECT w.queue, wk.kind, w.n, k.tenant_id
    FROM wanted w CROSS JOIN unnest(w.kinds) AS wk(kind)
    JOIN unnest(:fair_queues::text[], :fair_tenants::text[]) AS k(queue, tenant_id)
      ON k.queue = w.queue
    WHERE w.n > 0 AND NOT :discover::boolean
),
-- Each tenant's weight, room and base (its pass, else the queue's vt), once per tenant so
-- that the candidates below carry them without a join per row; its share of the claim
-- (at least n / :tenants_per_claim, see store/fairness.py), and whether this claim walks
-- it: the tenants furthest behind, as many as their shares fill the claim.
tenants AS MATERIALIZED (
    SELECT t.*,
           sum(t.share) OVER (PARTITION BY t.queue ORDER BY t.base, t.tenant_id
                              ROWS UNBOUNDED PRECEDING) - t.share < t.n AS chosen
    FROM (
        SELECT t.*,
               least(t.room, t.n, greatest(1, t.n / :tenants_per_claim::int,
                     ceil(t.n * t.weight / t.total::float8)::int)) AS share
        FROM (
            SELECT t.queue, t.tenant_id, t.n, t.weight,
                   sum(t.weight) OVER (PARTITION BY t.queue) AS total,
                   coalesce(p.pass, w.vt) AS base,
                   CASE WHEN t.cap IS NULL THEN t.n
                        ELSE greatest(0, least(t.n, t.cap - (
                            SELECT count(*) FROM conveyor_jobs r
                            WHERE r.state = 'running' AND r.queue = t.queue
                              AND r.tenant_id = t.tenant_id)))
                   END AS room
            FROM (
                SELECT DISTINCT a.queue, a.tenant_id, a.n, coalesce(l.weight, 1) AS weight,
                       l.concurrency AS cap
                FROM active a
                LEFT JOIN conveyor_tenant_limits l
                       ON l.queue = a.queue AND l.tenant_id = a.tenant_id
                WHERE a.tenant_id IS NOT NULL
            ) t
            JOIN wanted w ON w.queue = t.queue
            LEFT JOIN unnest(:fair_queues::text[], :fair_tenants::text[], :fair_passes::float8[])
                 AS p(queue, tenant_id, pass) ON p.queue = t.queue AND p.tenant_id = t.tenant_id
        ) t
    ) t
),
shares AS (
    SELECT a.queue, a.kind, a.tenant_id, t.room, t.n, t.weight, t.base, t.share
    FROM active a JOIN tenants t ON t.queue = a.queue AND t.tenant_id = a.tenant_id
    WHERE t.chosen AND t.share > 0
),
-- The chosen tenants' walks, each of its share, locked.
walked AS MATERIALIZED (
    SELECT s.queue, s.kind, s.tenant_id, s.room, s.share, s.n, s.weight, s.base,
           c.id, c.priority, c.run_at
    FROM shares s
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM conveyor_jobs
        WHERE state = 'queued' AND queue = s.queue AND kind = s.kind
          AND tenant_id = s.tenant_id AND run_at <= now()
        ORDER BY priority, run_at, id
        LIMIT s.share
        FOR UPDATE SKIP LOCKED
    ) c
),
-- part: claim_fair
-- The fair claim of the walks alone: the common case, kept small, since every part of a
-- statement costs at each call whether it runs or not (a refill behind a filter that
-- never passed cost the claim of 100 tenants a third of its time). Where it left a queue
-- short and more may be due there (a walk came back full, a tenant was left out, or the
-- tenants were the caller's, not found), the queue is named in fill_in, and the caller
-- claims what is missing at once with claim_fill.
candidates AS (
    SELECT queue, tenant_id, room, n, weight, base, id, priority, run_at FROM walked
),
-- include: claim_rank
fillable AS (
    SELECT w.queue FROM wanted w
    WHERE w.n > (SELECT count(*) FROM picked p WHERE p.queue = w.queue)
      AND (NOT :discover::boolean
           OR EXISTS (SELECT FROM tenants t
                      WHERE t.queue = w.queue AND NOT t.chosen AND t.share > 0)
           OR EXISTS (SELECT FROM shares s
                      WHERE s.queue = w.queue AND s.room > s.share
                        AND s.share = (SELECT count(*) FROM walked k
                                       WHERE k.queue = s.queue AND k.kind = s.kind
                                         AND k.tenant_id = s.tenant_id)))
),
-- include: claim_update

-- part: claim_fill
-- The fair claim with its refill: where the chosen tenants' shares left a queue short,
-- the tenants whose walk came back full (past their last row) and the tenants left out
-- (from their first) are walked in pass order, each for what is still missing within its
-- room, until the queue has n: a claim returns fewer than n only when the queue has no
-- more due jobs it may take (or another claimer holds them).
-- What the walks leave missing: a tenant's walks of several kinds count up to its room.
short AS (
    SELECT w.queue, w.n - coalesce((
        SELECT sum(least(c.got, c.room))
        FROM (SELECT count(*) AS got, min(k.room) AS room FROM walked k
              WHERE k.queue = w.queue GROUP BY k.tenant_id) c), 0) AS missing
    FROM wanted w
),
-- The tenants whose walk came back full, with their last row: they may hold more. Only
-- looked for in a queue the walks left short (with many tenants, each walk of one row
-- comes back full, and the claim is seldom short).
full_walks AS (
    -- more: the room its walks of all kinds left the tenant.
    SELECT k.queue, k.kind, k.tenant_id, k.room, k.n, k.weight, k.base,
           k.room - (SELECT count(*) FROM walked o
                     WHERE o.queue = k.queue AND o.tenant_id = k.tenant_id) AS more,
           m.missing,
           (array_agg(k.priority ORDER BY k.priority DESC, k.run_at DESC, k.id DESC))[1]
               AS last_priority,
           (array_agg(k.run_at ORDER BY k.priority DESC, k.run_at DESC, k.id DESC))[1]
               AS last_run_at,
           (array_agg(k.id ORDER BY k.priority DESC, k.run_at DESC, k.id DESC))[1] AS last_id
    FROM walked k JOIN short m ON m.queue = k.queue AND m.missing > 0
    -- Uncorrelated: a one-time filter, so that nothing here runs when no queue is short.
    WHERE EXISTS (SELECT FROM short s WHERE s.missing > 0)
    GROUP BY k.queue, k.kind, k.tenant_id, k.room, k.share, k.n, k.weight, k.base, m.missing
    HAVING count(*) = k.share AND k.room > k.share
),
-- Where the walks left a queue short, the walks that may give more, in pass order (base,
-- tenant, kind): those that came back full, past their last row, and those of the tenants
-- this claim did not choose, from the start (priority 0 comes before any job's).
pending AS MATERIALIZED (
    SELECT p.*, row_number() OVER (
               PARTITION BY p.queue ORDER BY p.base, p.tenant_id, p.kind) AS ord
    FROM (
        SELECT f.queue, f.kind, f.tenant_id, f.room, f.n, f.weight, f.base, f.more,
               f.last_priority, f.last_run_at, f.last_id
        FROM full_walks f
        UNION ALL
        SELECT t.queue, a.kind, t.tenant_id, t.room, t.n, t.weight, t.base, t.room,
               0, '-infinity'::timestamptz, 0
        FROM active a
        JOIN tenants t ON t.queue = a.queue AND t.tenant_id = a.tenant_id
        JOIN short m ON m.queue = a.queue AND m.missing > 0
        WHERE NOT t.chosen AND t.share > 0 AND EXISTS (SELECT FROM short s WHERE s.missing > 0)
    ) p
),
-- Those walks one after another, each for what is still missing within its room, until
-- the queue has n: a tenant left out may hold all that is missing, whatever its share.
-- Each step's rows travel as arrays, one row a step, so that the next step knows what is
-- left; used: what the refill took of the step's tenant (its walks of each kind are
-- consecutive), so that they share its room.
refill (queue, ord, missing, used, tenant_id, room, n, weight, base, ids, priorities,
        run_ats)
AS (
    SELECT m.queue, 0::bigint, m.missing, 0::bigint, NULL::text, 0::bigint, 0::bigint,
           0::bigint, 0::float8, NULL::bigint[], NULL::smallint[], NULL::timestamptz[]
    FROM short m WHERE m.missing > 0
    UNION ALL
    SELECT r.queue, p.ord, r.missing - c.got, c.got + u.used, p.tenant_id, p.room::bigint,
           p.n::bigint, p.weight::bigint, p.base::float8, c.ids, c.priorities, c.run_ats
    FROM refill r
    JOIN pending p ON p.queue = r.queue AND p.ord = r.ord + 1
    CROSS JOIN LATERAL (
        SELECT CASE WHEN p.tenant_id = r.tenant_id THEN r.used ELSE 0 END AS used) u
    CROSS JOIN LATERAL (
        SELECT count(*) AS got, array_agg(c.id) AS ids, array_agg(c.priority) AS priorities,
               array_agg(c.run_at) AS run_ats
        FROM (
            SELECT id, priority, run_at FROM conveyor_jobs
            WHERE state = 'queued' AND queue = p.queue AND kind = p.kind
              AND tenant_id = p.tenant_id AND run_at <= now()
              AND (priority, run_at, id) > (p.last_priority, p.last_run_at, p.last_id)
            ORDER BY priority, run_at, id
            LIMIT greatest(0, least(r.missing, p.more - u.used))
            FOR UPDATE SKIP LOCKED
        ) c
    ) c
    WHERE r.missing > 0
),
refilled AS (
    SELECT r.queue, r.tenant_id, r.room, r.n, r.weight, r.base, c.id, c.priority, c.run_at
    FROM refill r
    CROSS JOIN LATERAL unnest(r.ids, r.priorities, r.run_ats) AS c(id, priority, run_at)
    WHERE r.ord > 0
),
candidates AS (
    SELECT queue, tenant_id, room, n, weight, base, id, priority, run_at FROM walked
    UNION ALL
    SELECT queue, tenant_id, room, n, weight, base, id, priority, run_at FROM refilled
),
-- include: claim_rank
fillable AS (SELECT NULL::text AS queue WHERE false),
-- include: claim_update

-- part: claim_rank
-- The candidates (candidates: queue, tenant_id, room, n, weight, base, id, priority,
-- run_at) ranked in turn, the first n of each queue picked, and each tenant's pass after.
ranked AS (
    SELECT c.queue, c.tenant_id, c.id, c.priority, c.run_at, c.room, c.n, c.base,
           c.base + c.pos::float8 / c.weight AS rank, c.pos
    FROM (
        SELECT c.*, row_number() OVER (
                   PARTITION BY c.queue, c.tenant_id ORDER BY c.priority, c.run_at, c.id
               ) AS pos
        FROM candidates c
    ) c
),
picked AS MATERIALIZED (
    SELECT r.queue, r.tenant_id, r.id, r.base, r.rank
    FROM (
        SELECT r.*, row_number() OVER (
                   PARTITION BY r.queue ORDER BY r.rank, r.base, r.priority, r.run_at, r.id
               ) AS turn
        FROM ranked r WHERE r.pos <= r.room
    ) r
    WHERE r.turn <= r.n
),
-- Each tenant's pass after this claim: the rank of its last job taken, or where it stood
-- if it got none (walked or not: a tenant this claim left for the next keeps its place).
passes AS (
    SELECT t.queue, t.tenant_id, coalesce(max(p.rank), t.base) AS pass
    FROM tenants t LEFT JOIN picked p ON p.queue = t.queue AND p.tenant_id = t.tenant_id
    GROUP BY t.queue, t.tenant_id, t.base
),
-- part: claim_lone
-- The claim of queues where the caller's last claim found at most one tenant: per
-- (queue, kind) that tenant (:lone_tenants, one per :queues entry; NULL where it found
-- none) or else the first tenant holding queued jobs of the kind (a descent of the claim
-- index), and a look either side of it for any other (a descent each). A queue where all
-- its kinds have that one tenant (or none) is alone, and is claimed as the fair claim
-- claims one tenant: its first n due jobs, walked per kind. A queue that is not alone
-- claims nothing here: its tenants come back in the passes and the queue in fill_in, and
-- the caller claims it at once with claim_fill. What this part leaves out of the fair
-- claim (the skip scan's walk over the tenants, the shares, caps and ranking) is its
-- fixed cost for one tenant. Every tenant found stays at the queue's vt: a lone tenant's
-- pass is the vt, whatever its value, and a newcomer starts there.
--
-- Materialized, so that the look for the first tenant runs once, not once more in each
-- look either side of it.
lone_first AS MATERIALIZED (
    SELECT w.queue, w.n, w.vt, wk.kind, coalesce(t.tenant_id, (
        SELECT j.tenant_id FROM conveyor_jobs j
        WHERE j.state = 'queued' AND j.queue = w.queue AND j.kind = wk.kind
        ORDER BY j.tenant_id LIMIT 1)) AS tenant_id
    FROM wanted w
    JOIN unnest(:queues::text[], :lone_tenants::text[]) AS t(queue, tenant_id)
      ON t.queue = w.queue
    CROSS JOIN unnest(w.kinds) AS wk(kind)
    WHERE w.n > 0
),
lone AS MATERIALIZED (
    SELECT l.*,
           (SELECT j.tenant_id FROM conveyor_jobs j
            WHERE j.state = 'queued' AND j.queue = l.queue AND j.kind = l.kind
              AND j.tenant_id < l.tenant_id
            ORDER BY j.tenant_id DESC LIMIT 1) AS below,
           (SELECT j.tenant_id FROM conveyor_jobs j
            WHERE j.state = 'queued' AND j.queue = l.queue AND j.kind = l.kind
              AND j.tenant_id > l.tenant_id
            ORDER BY j.tenant_id LIMIT 1) AS above
    FROM lone_first l
),
alone AS (
    SELECT queue FROM lone GROUP BY queue
    HAVING count(DISTINCT tenant_id) <= 1 AND count(below) = 0 AND count(above) = 0
),
picked AS (
    SELECT c.id
    FROM wanted w
    CROSS JOIN LATERAL (
        SELECT k.id
        FROM lone l
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM conveyor_jobs
            WHERE state = 'queued' AND queue = l.queue AND kind = l.kind
              AND tenant_id = l.tenant_id AND run_at <= now()
            ORDER BY priority, run_at, id
            LIMIT l.n
            FOR UPDATE SKIP LOCKED
        ) k
        WHERE l.queue = w.queue
        ORDER BY k.priority, k.run_at, k.id
        LIMIT greatest(w.n, 0)
    ) c
    WHERE w.queue IN (SELECT queue FROM alone)
),
passes AS (
    SELECT DISTINCT l.queue, t.tenant_id, l.vt AS pass
    FROM lone l
    CROSS JOIN LATERAL (VALUES (l.tenant_id), (l.below), (l.above)) AS t(tenant_id)
    WHERE t.tenant_id IS NOT NULL
),
fillable AS (
    SELECT DISTINCT queue FROM lone WHERE queue NOT IN (SELECT queue FROM alone)
),
-- include: claim_update

-- part: claim_update
-- The picked jobs made running under :worker_id with a lease of :lease_s seconds.
claimed AS (
    UPDATE conveyor_jobs j
    SET state = 'running',
        attempt = j.attempt + 1,
        locked_by = :worker_id,
        lease_expires_at = now() + make_interval(secs => :lease_s),
        started_at = now(),
        progress = NULL,
        progress_message = NULL
    -- = ANY(ARRAY(...)) rather than a join: the planner cannot size LIMIT n and would hash
    -- the whole table.
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.*
),

-- part: offers
-- What the claim left free, per unlimited queue, is offered for handoff (:offer_key: the
-- key of the caller's LISTEN connection; NULL offers nothing), for jobs of the kinds the caller
-- runs; the caller's other offers in the claimed queues are taken back.
spare AS (
    SELECT w.queue, w.kinds,
           w.n - (SELECT count(*) FROM claimed c WHERE c.queue = w.queue) AS slots
    FROM wanted w WHERE :offer_key::bigint IS NOT NULL AND NOT w.limited
),
offered AS (
    INSERT INTO conveyor_offers (queue, worker_id, slots, lock_key, lease_s, kinds)
    SELECT queue, :worker_id, slots, :offer_key, :lease_s, kinds FROM spare WHERE slots > 0
    ON CONFLICT (queue, worker_id) DO UPDATE
    SET slots = excluded.slots, lock_key = excluded.lock_key, lease_s = excluded.lease_s,
        kinds = excluded.kinds
    RETURNING queue
),
unoffered AS (
    DELETE FROM conveyor_offers
    WHERE worker_id = :worker_id AND queue = ANY(:queues::text[])
      AND queue NOT IN (SELECT queue FROM spare WHERE slots > 0)
)

-- name: lock_limited_queues
-- Serialises claims on queues with a cluster-wide limit: the next statement counts their
-- running jobs with a snapshot taken after this lock, so two workers cannot both take the
-- last slot. Queues without a limit are not locked.
SELECT name, concurrency_limit FROM conveyor_queues
WHERE name = ANY(:queues::text[]) AND (concurrency_limit IS NOT NULL OR tenant_caps)
  AND NOT paused
ORDER BY name
FOR UPDATE

-- name: limited_queues
SELECT name FROM conveyor_queues WHERE concurrency_limit IS NOT NULL OR tenant_caps

-- name: heartbeat
-- Renews only the jobs the worker names with their attempt, so a job it lost track of
-- is never kept alive by it; reports which it holds and which have a cancel request.
WITH held AS (
    SELECT j.id, j.cancel_requested
    FROM conveyor_jobs j
    JOIN unnest(:job_ids::bigint[], :attempts::int[]) AS h(id, attempt) ON h.id = j.id
    WHERE j.state = 'running' AND j.locked_by = :worker_id AND j.attempt = h.attempt
),
renewed AS (
    UPDATE conveyor_jobs j SET lease_expires_at = now() + make_interval(secs => :lease_s)
    FROM held WHERE j.id = held.id AND :renew::boolean
),
worker AS (
    UPDATE conveyor_workers
    SET last_seen_at = now(), expires_at = now() + make_interval(secs => :lease_s),
        memory_mb = coalesce(:memory_mb::float8, memory_mb)
    WHERE id = :worker_id AND :renew::boolean
)
SELECT id, cancel_requested FROM held

-- name: adopt
-- Jobs running under this worker that it does not know of (:known: those it does): a
-- handoff whose notice was lost with the LISTEN connection, or a claim whose answer was lost.
SELECT * FROM conveyor_jobs
WHERE state = 'running' AND locked_by = :worker_id AND id <> ALL(:known::bigint[])

-- part: claimed_rows
-- The claimed jobs as the first rows of the exchange's and the claim's answer.
SELECT 'claimed' AS what, c.*, NULL::timestamptz AS next_run_at,
       NULL::bigint[] AS settled_ids, NULL::int[] AS settled_attempts,
       NULL::text[] AS requeued_in, NULL::text[] AS unlocked_in, NULL::text[] AS offered_in,
       NULL::text[] AS fair_queues, NULL::text[] AS fair_tenants, NULL::float8[] AS fair_passes,
       NULL::text[] AS fill_in
FROM claimed c

-- part: passes_out
-- The tenants' passes after the claim, and the queues to fill (fillable: queue), for the
-- summary row.
       ARRAY(SELECT queue FROM passes ORDER BY queue, tenant_id),
       ARRAY(SELECT tenant_id FROM passes ORDER BY queue, tenant_id),
       ARRAY(SELECT pass FROM passes ORDER BY queue, tenant_id),
       ARRAY(SELECT queue FROM fillable)

-- part: next_due
-- When a claim came back short: the next run_at of a scheduled job of the worker's kinds
-- in its queues, so that it sleeps until then.
SELECT min(s.run_at) FROM unnest(:queues::text[]) AS q(name)
CROSS JOIN unnest(:kinds::text[]) AS k(kind)
CROSS JOIN LATERAL (
    SELECT min(run_at) AS run_at FROM conveyor_jobs
    WHERE state = 'queued' AND queue = q.name AND kind = k.kind
      AND run_at > now()) AS s
