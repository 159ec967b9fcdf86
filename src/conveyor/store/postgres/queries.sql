-- PostgreSQL queries of PostgresStore. Parameters are positional ($n); the clock is the
-- server's now(), so workers on machines with skewed clocks agree on leases and due times.
-- Every statement that changes a running job is guarded on state, attempt and owner.

-- name: insert_jobs
-- A whole batch travels as one JSON document that the server unpacks: encoding a dozen
-- parameter arrays element by element in the driver cost more than the insert itself.
-- Ids are drawn in the CTE (materialised, so once per row) and come back as one array in
-- input order, with the ordinals of the rows not inserted because an active job holds
-- their unique_key.
WITH src AS MATERIALIZED (
    SELECT nextval('conveyor_jobs_id_seq'::regclass) AS id, j.*
    FROM jsonb_to_recordset($1::jsonb) AS j(
        ord int, tenant_id text, queue text, kind text, priority smallint, payload jsonb,
        max_attempts int, run_at float8, delay_s float8, timeout_s float8, unique_key text,
        meta jsonb)
),
ins AS (
    INSERT INTO conveyor_jobs (
        id, tenant_id, queue, kind, priority, state, payload, max_attempts, run_at,
        timeout_s, unique_key, meta, created_at
    )
    SELECT id, tenant_id, queue, kind, priority, 'queued', coalesce(payload, 'null'), max_attempts,
           coalesce(to_timestamp(run_at), now() + make_interval(secs => delay_s)),
           timeout_s, unique_key, meta, now()
    FROM src
    ON CONFLICT (tenant_id, unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING id
),
-- One NOTIFY per queue ($2: the channel); sent at commit, so a worker never wakes before
-- the jobs are visible. Referenced below, or PostgreSQL would not evaluate it.
notified AS (
    SELECT pg_notify($2, 'q:' || queue) FROM (SELECT DISTINCT queue FROM src) AS q
)
SELECT array_agg(src.id ORDER BY src.ord),
       array_agg(src.ord ORDER BY src.ord) FILTER (WHERE ins.id IS NULL),
       (SELECT count(*) FROM notified)
FROM src LEFT JOIN ins ON ins.id = src.id

-- name: insert_job
-- One job, plain parameters: the latency path (the batch statement's JSON unpacking cost
-- more than the insert). No row back means an active job holds its unique_key.
--
-- The job is handed to a waiting worker (see conveyor_offers) when it is due now, its
-- queue is neither paused nor limited, a live worker that runs its kind offers a free slot
-- there, and the queue holds no due queued job of a kind that worker runs (which would
-- have to run first; jobs of kinds it cannot run do not stop the handoff): it is inserted
-- running under that worker, attempt 1, and its NOTIFY carries it. Otherwise it is queued
-- and the NOTIFY wakes the workers to claim it. Of several offers the one with the most
-- free slots takes it; an offer another enqueue holds is skipped, not waited for.
WITH taker AS (
    SELECT o.worker_id, o.lease_s
    FROM conveyor_offers o
    -- For each offer the filters on o leave, the head of the claim index per kind it
    -- serves, in the index's own order, so that only the index can answer it. Written as
    -- NOT EXISTS over kind = ANY(o.kinds), the generic plan read the jobs table
    -- sequentially, past every queued job of the kinds the offer does not serve.
    LEFT JOIN LATERAL (
        SELECT true AS due
        FROM unnest(o.kinds) AS ok(kind)
        CROSS JOIN LATERAL (
            SELECT FROM conveyor_jobs q
            WHERE q.state = 'queued' AND q.queue = $2 AND q.kind = ok.kind
              AND q.run_at <= now()
            ORDER BY q.priority, q.run_at, q.id
            LIMIT 1
        ) head
        LIMIT 1
    ) ahead ON true
    WHERE o.queue = $2 AND o.slots > 0 AND $3 = ANY(o.kinds)
      AND $7::float8 IS NULL AND $8::float8 <= 0
      AND ahead.due IS NULL
      -- o.queue, not $2: a condition on the offer is only looked at when there is one.
      AND NOT EXISTS (
          SELECT FROM conveyor_queues s
          WHERE s.name = o.queue AND (s.paused OR s.concurrency_limit IS NOT NULL))
      AND NOT pg_try_advisory_xact_lock_shared(o.lock_key)
    ORDER BY o.slots DESC
    LIMIT 1
    FOR UPDATE OF o SKIP LOCKED
),
ins AS (
    INSERT INTO conveyor_jobs (
        id, tenant_id, queue, kind, priority, state, payload, max_attempts, run_at,
        timeout_s, unique_key, meta, created_at, attempt, locked_by, lease_expires_at,
        started_at
    )
    SELECT nextval('conveyor_jobs_id_seq'::regclass), $1, $2, $3, $4,
           CASE WHEN t.worker_id IS NULL THEN 'queued' ELSE 'running' END,
           $5::jsonb, $6, coalesce(to_timestamp($7), now() + make_interval(secs => $8)), $9,
           $10, $11::jsonb, now(), CASE WHEN t.worker_id IS NULL THEN 0 ELSE 1 END,
           t.worker_id, now() + make_interval(secs => t.lease_s),
           CASE WHEN t.worker_id IS NOT NULL THEN now() END
    FROM (SELECT) AS one LEFT JOIN taker t ON true
    ON CONFLICT (tenant_id, unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING *
),
took AS (
    UPDATE conveyor_offers o SET slots = o.slots - 1
    FROM ins
    WHERE ins.locked_by IS NOT NULL AND o.queue = ins.queue AND o.worker_id = ins.locked_by
),
-- include: notify_or_hand_off
SELECT id, (SELECT count(*) FROM notified), locked_by IS NOT NULL AS handed_off FROM ins

-- name: reserve_ids
-- For a bulk COPY: ids in input order, and the server's clock for run_at and created_at.
-- The sequence is named, not looked up per row: pg_get_serial_sequence() in the select
-- list cost ten times the nextval() calls themselves.
SELECT array_agg(nextval('conveyor_jobs_id_seq'::regclass)), now() FROM generate_series(1, $1)

-- name: find_active_unique
SELECT k.tenant_id, k.unique_key, j.id
FROM unnest($1::text[], $2::text[]) AS k(tenant_id, unique_key)
JOIN conveyor_jobs j
  ON j.tenant_id = k.tenant_id AND j.unique_key = k.unique_key
 AND j.state IN ('queued', 'running')

-- name: notify_queues
SELECT pg_notify($1, 'q:' || q) FROM unnest($2::text[]) AS q

-- name: notify_cancel
SELECT pg_notify($1, 'c:' || $2::bigint)

-- name: lock_limited_queues
-- Serialises claims on queues with a cluster-wide limit: the next statement counts their
-- running jobs with a snapshot taken after this lock, so two workers cannot both take the
-- last slot. Queues without a limit are not locked.
SELECT name, concurrency_limit FROM conveyor_queues
WHERE name = ANY($1::text[]) AND concurrency_limit IS NOT NULL AND NOT paused
ORDER BY name
FOR UPDATE

-- name: exchange
-- A worker's whole exchange in one statement and one commit: record finished attempts
-- ($6..$11) and progress ($13..$16), claim for free slots ($1, $2) jobs of the kinds the
-- worker runs ($22), update the worker's offers ($5, $19..$21) and, when $18, rescue
-- expired leases and forget expired workers and dead offers. The parts touch disjoint rows — the
-- worker's reported running jobs, queued jobs, other running jobs — which is what lets
-- them share a statement.
--
-- Claims take, per queue, the first n due jobs of the worker's kinds in priority, run_at,
-- id order, skipping rows another claimer has locked; n is cut to the free slots where a cluster-wide limit
-- is set (the caller has locked those queues' rows first, so the count is exact). A
-- limited queue the caller did not lock ($17 lists those it locked: its cache had not
-- heard of the limit yet) claims nothing; the summary names it in unlocked_in, and the
-- caller claims it again under its lock.
--
-- Rows come back tagged: 'claimed' and 'rescued' rows carry the job; the one 'summary'
-- row carries the (id, attempt) of the recorded outcomes, the queues a recorded outcome
-- put a job back into, and next_run_at when the claim got fewer jobs than it could take.
WITH settled AS (
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
    FROM unnest($6::bigint[], $7::int[], $8::text[], $9::text[], $10::text[], $11::float8[])
         AS o(id, attempt, kind, result, error, delay_s)
    LEFT JOIN unnest($13::bigint[], $14::int[], $15::float8[], $16::text[])
         AS p(id, attempt, fraction, message) ON p.id = o.id AND p.attempt = o.attempt
    WHERE j.id = o.id AND j.state = 'running' AND j.attempt = o.attempt AND j.locked_by = $3
    RETURNING o.id, o.attempt, j.queue, o.kind
),
reported AS (
    UPDATE conveyor_jobs j
    SET progress = p.fraction, progress_message = p.message
    FROM unnest($13::bigint[], $14::int[], $15::float8[], $16::text[])
         AS p(id, attempt, fraction, message)
    WHERE j.id = p.id AND j.state = 'running' AND j.attempt = p.attempt AND j.locked_by = $3
      AND p.id <> ALL($6::bigint[])
),
wanted AS (
    SELECT w.queue,
           CASE WHEN q.concurrency_limit IS NULL THEN w.n
                WHEN NOT w.queue = ANY($17::text[]) THEN 0
                ELSE least(w.n, q.concurrency_limit - (
                    SELECT count(*) FROM conveyor_jobs r
                    WHERE r.state = 'running' AND r.queue = w.queue))
           END AS n,
           q.concurrency_limit IS NOT NULL AND NOT w.queue = ANY($17::text[]) AS unlocked,
           q.concurrency_limit IS NOT NULL AS limited,
           $22::text[] AS kinds
    FROM unnest($1::text[], $2::int[]) AS w(queue, n)
    LEFT JOIN conveyor_queues q ON q.name = w.queue
    WHERE q.paused IS NOT TRUE
),
-- include: claim_jobs
expired AS (
    -- Never a row the outcomes update: one statement must not change a row twice.
    SELECT id FROM conveyor_jobs
    WHERE $18::boolean AND state = 'running' AND lease_expires_at < now()
      AND id <> ALL($6::bigint[])
    LIMIT $12
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
forgotten AS (
    DELETE FROM conveyor_workers WHERE $18::boolean AND expires_at < now()
),
-- Offers whose LISTEN connection is gone (a shared lock on the key is granted), and those
-- of expired workers. Never the caller's own: its offers change in this statement.
dead_offers AS (
    DELETE FROM conveyor_offers o
    WHERE $18::boolean AND o.worker_id <> $3
      AND (pg_try_advisory_xact_lock_shared(o.lock_key)
           OR o.worker_id IN (SELECT id FROM conveyor_workers WHERE expires_at < now()))
),
-- Slots the caller's jobs freed in queues it waits on ($19, $20: never a claimed queue),
-- or all its offers taken back ($21: it stops fetching).
freed AS (
    UPDATE conveyor_offers o SET slots = o.slots + f.n
    FROM unnest($19::text[], $20::int[]) AS f(queue, n)
    WHERE o.worker_id = $3 AND o.queue = f.queue AND NOT $21::boolean
),
withdrawn AS (
    DELETE FROM conveyor_offers WHERE $21::boolean AND worker_id = $3
),
-- include: offers
SELECT 'claimed' AS what, c.*, NULL::timestamptz AS next_run_at,
       NULL::bigint[] AS settled_ids, NULL::int[] AS settled_attempts,
       NULL::text[] AS requeued_in, NULL::text[] AS unlocked_in, NULL::text[] AS offered_in
FROM claimed c
UNION ALL
SELECT 'rescued', r.*, NULL, NULL, NULL, NULL, NULL, NULL FROM rescued r
UNION ALL
SELECT 'summary', (NULL::conveyor_jobs).*,
       CASE WHEN (SELECT count(*) FROM claimed) < (SELECT coalesce(sum(greatest(n, 0)), 0) FROM wanted)
            THEN (SELECT min(s.run_at) FROM unnest($1::text[]) AS q(name)
                  CROSS JOIN unnest($22::text[]) AS k(kind)
                  CROSS JOIN LATERAL (
                      SELECT min(run_at) AS run_at FROM conveyor_jobs
                      WHERE state = 'queued' AND queue = q.name AND kind = k.kind
                        AND run_at > now()) AS s)
       END,
       ARRAY(SELECT id FROM settled),
       ARRAY(SELECT attempt FROM settled),
       ARRAY(SELECT DISTINCT queue FROM settled WHERE kind IN ('retry', 'released')),
       ARRAY(SELECT queue FROM wanted WHERE unlocked),
       ARRAY(SELECT queue FROM offered)

-- name: claim
-- The exchange cut down to its claim, for a worker with nothing to report and no rescue
-- due: the pass an idle worker makes when a notice wakes it, so the one on the
-- enqueue-to-start path. Measured there, alternating the two, the full statement took
-- 0.27 ms more at the median (1.60 against 1.33 ms), running the parts that had nothing
-- to do. Same parameters $1..$5, then the kinds ($6, the exchange's $22); same rows back.
-- Only for queues the caller holds no lock on: a limited queue claims nothing and is named
-- in unlocked_in, as in the exchange.
WITH wanted AS (
    SELECT w.queue,
           CASE WHEN q.concurrency_limit IS NULL THEN w.n ELSE 0 END AS n,
           q.concurrency_limit IS NOT NULL AS unlocked,
           q.concurrency_limit IS NOT NULL AS limited,
           $6::text[] AS kinds
    FROM unnest($1::text[], $2::int[]) AS w(queue, n)
    LEFT JOIN conveyor_queues q ON q.name = w.queue
    WHERE q.paused IS NOT TRUE
),
-- include: claim_jobs
-- include: offers
SELECT 'claimed' AS what, c.*, NULL::timestamptz AS next_run_at,
       NULL::bigint[] AS settled_ids, NULL::int[] AS settled_attempts,
       NULL::text[] AS requeued_in, NULL::text[] AS unlocked_in, NULL::text[] AS offered_in
FROM claimed c
UNION ALL
SELECT 'summary', (NULL::conveyor_jobs).*,
       CASE WHEN (SELECT count(*) FROM claimed) < (SELECT coalesce(sum(n), 0) FROM wanted)
            THEN (SELECT min(s.run_at) FROM unnest($1::text[]) AS q(name)
                  CROSS JOIN unnest($6::text[]) AS k(kind)
                  CROSS JOIN LATERAL (
                      SELECT min(run_at) AS run_at FROM conveyor_jobs
                      WHERE state = 'queued' AND queue = q.name AND kind = k.kind
                        AND run_at > now()) AS s)
       END,
       '{}', '{}', '{}',
       ARRAY(SELECT queue FROM wanted WHERE unlocked),
       ARRAY(SELECT queue FROM offered)

-- name: limited_queues
SELECT name FROM conveyor_queues WHERE concurrency_limit IS NOT NULL

-- name: heartbeat
-- Renews only the jobs the worker names with their attempt, so a job it lost track of
-- is never kept alive by it; reports which it holds and which have a cancel request.
WITH held AS (
    SELECT j.id, j.cancel_requested
    FROM conveyor_jobs j
    JOIN unnest($2::bigint[], $3::int[]) AS h(id, attempt) ON h.id = j.id
    WHERE j.state = 'running' AND j.locked_by = $1 AND j.attempt = h.attempt
),
renewed AS (
    UPDATE conveyor_jobs j SET lease_expires_at = now() + make_interval(secs => $4)
    FROM held WHERE j.id = held.id AND $5::boolean
),
worker AS (
    UPDATE conveyor_workers
    SET last_seen_at = now(), expires_at = now() + make_interval(secs => $4),
        memory_mb = coalesce($6::float8, memory_mb)
    WHERE id = $1 AND $5::boolean
)
SELECT id, cancel_requested FROM held

-- name: prune
-- Oldest finished jobs first, in batches, with their requests; periodic ticks past the
-- same age go too.
WITH ticks AS (
    DELETE FROM conveyor_periodic_ticks WHERE tick < now() - make_interval(secs => $1)
),
old AS (
    SELECT id FROM conveyor_jobs
    WHERE finished_at < now() - make_interval(secs => $1)
      AND state IN ('completed', 'failed', 'cancelled')
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
requests AS (
    DELETE FROM conveyor_requests WHERE job_id IN (SELECT id FROM old)
)
DELETE FROM conveyor_jobs WHERE id IN (SELECT id FROM old)

-- name: get_job
SELECT * FROM conveyor_jobs WHERE id = $1

-- name: cancel
UPDATE conveyor_jobs
SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
    finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
    cancel_requested = true
WHERE id = $1 AND state IN ('queued', 'running')
RETURNING *

-- name: retry
UPDATE conveyor_jobs
SET state = 'queued', run_at = now(), result = NULL, finished_at = NULL, started_at = NULL,
    cancel_requested = false, locked_by = NULL, lease_expires_at = NULL, progress = NULL,
    progress_message = NULL,
    max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END
WHERE id = $1 AND state IN ('failed', 'cancelled')
RETURNING *

-- name: queue_exists
-- A queue exists once it has a setting, any job (each state read off its partial index,
-- whose first column is the queue) or a live worker serving it.
SELECT EXISTS (SELECT 1 FROM conveyor_queues WHERE name = $1)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'queued' AND queue = $1)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'running' AND queue = $1)
    OR EXISTS (SELECT 1 FROM conveyor_jobs WHERE finished_at IS NOT NULL AND queue = $1)
    OR EXISTS (SELECT 1 FROM conveyor_workers WHERE expires_at >= now() AND queues ? $1)

-- name: set_paused
INSERT INTO conveyor_queues (name, paused, updated_at) VALUES ($1, $2, now())
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at

-- name: set_limit
INSERT INTO conveyor_queues (name, concurrency_limit, updated_at) VALUES ($1, $2, now())
ON CONFLICT (name) DO UPDATE
SET concurrency_limit = excluded.concurrency_limit, updated_at = excluded.updated_at

-- name: insert_tick
INSERT INTO conveyor_periodic_ticks (kind, tick, job_id) VALUES ($1, to_timestamp($2), $3)
ON CONFLICT DO NOTHING
RETURNING job_id

-- name: stats_counts
-- Active jobs only, each part off the partial index that holds its state: O(queued +
-- running), whatever the number of finished jobs kept. Queued jobs by kind too (the claim
-- index's order), so that kinds no live worker runs can be shown.
SELECT queue, 'queued', kind, count(*) FROM conveyor_jobs WHERE state = 'queued'
GROUP BY queue, kind
UNION ALL
SELECT queue, 'running', NULL, count(*) FROM conveyor_jobs WHERE state = 'running'
GROUP BY queue

-- name: stats_finished
-- Jobs that finished in the last $1 seconds, by queue and state: a range of the prune
-- index, so the cost follows the rate of jobs, not the size of the table.
SELECT queue, state, NULL, count(*) FROM conveyor_jobs
WHERE finished_at >= now() - make_interval(secs => $1)
  AND state IN ('completed', 'failed', 'cancelled')
GROUP BY queue, state

-- name: stats_due
SELECT queue, count(*), extract(epoch FROM now() - min(run_at)) FROM conveyor_jobs
WHERE state = 'queued' AND run_at <= now() GROUP BY queue

-- name: stats_recent
SELECT queue, state, count(*) FROM conveyor_jobs
WHERE state IN ('completed', 'failed') AND finished_at >= now() - interval '60 seconds'
GROUP BY queue, state

-- name: stats_run_times
-- The median and 95th percentile of the last 1,000 completed jobs of each queue named
-- ($1): each a backward range of the index of finished jobs. The queue is a range of one
-- value, not an equality, and is in the ORDER BY, so that only that index gives the order:
-- with "queue = ..." the planner walked the prune index backwards over every finished job
-- of every queue, filtering (590 ms for three queues in a table of 3,000,000; 7 ms now).
SELECT q.name,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.seconds),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY r.seconds)
FROM unnest($1::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT extract(epoch FROM finished_at - started_at) AS seconds FROM conveyor_jobs
    WHERE queue >= q.name AND queue <= q.name AND state = 'completed'
      AND finished_at IS NOT NULL AND started_at IS NOT NULL
    ORDER BY queue DESC, finished_at DESC LIMIT 1000
) r
GROUP BY q.name

-- name: queue_settings
SELECT name, paused, concurrency_limit FROM conveyor_queues

-- name: register_worker
INSERT INTO conveyor_workers (
    id, hostname, pid, queues, started_at, last_seen_at, expires_at, kinds, memory_mb
)
VALUES ($1, $2, $3, $4, now(), now(), now() + make_interval(secs => $5), $6, $7)
ON CONFLICT (id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at,
    kinds = excluded.kinds, memory_mb = excluded.memory_mb

-- name: unregister_worker
WITH offers AS (
    DELETE FROM conveyor_offers WHERE worker_id = $1
)
DELETE FROM conveyor_workers WHERE id = $1

-- name: drop_offers
-- A queue paused or given a cluster-wide limit takes no more handoffs (insert_job checks
-- both as well; this clears what is there at once).
DELETE FROM conveyor_offers WHERE queue = $1

-- name: adopt
-- Jobs running under this worker that it does not know of ($2: those it does): a handoff
-- whose notice was lost with the LISTEN connection, or a claim whose answer was lost.
SELECT * FROM conveyor_jobs WHERE state = 'running' AND locked_by = $1 AND id <> ALL($2::bigint[])

-- name: list_workers
SELECT id, hostname, pid, queues, started_at, last_seen_at, expires_at, kinds, memory_mb
FROM conveyor_workers
WHERE expires_at >= now() ORDER BY started_at

-- name: schema_version
SELECT coalesce(max(version), 0) FROM conveyor_schema

-- name: create_request
-- A POST in one statement and one round trip: the request, its job (with its NOTIFY) and
-- its queue position. $1..$11 are insert_job's job, $12 the channel, $13..$17 the request.
--
-- The request goes in first, with a job id drawn up front, and the job only if the
-- request did: an Idempotency-Key this caller used before conflicts, and then no job is
-- inserted, so a repeat never leaves a stray job. A key used before this statement
-- began is found in its snapshot and that request comes back (created false). A key
-- committed by a racing call after that makes the request insert wait for it and do
-- nothing: then no row comes back and the caller runs the statement again, which sees it.
--
-- JSON parameters are text, cast where used: a repeat returns the first request even
-- when its input is JSON that jsonb refuses (a \u0000 in a string).
--
-- A job whose unique_key an active job holds resolves to that job, as enqueue does. The
-- job insert has no ON CONFLICT: a holder that commits during this statement fails it
-- with a unique violation (the request is undone with it) and the caller runs it again.
WITH existing AS (
    SELECT * FROM conveyor_requests
    WHERE tenant_id = $1 AND caller_id = $13 AND idempotency_key = $16
),
holder AS (
    SELECT id FROM conveyor_jobs
    WHERE tenant_id = $1 AND unique_key = $10 AND state IN ('queued', 'running')
),
ids AS MATERIALIZED (
    SELECT coalesce((SELECT id FROM holder), nextval('conveyor_jobs_id_seq'::regclass)) AS id
    WHERE NOT EXISTS (SELECT FROM existing)
),
req AS (
    INSERT INTO conveyor_requests (
        tenant_id, caller_id, kind, input, job_id, idempotency_key, http_request_id, created_at
    )
    SELECT $1, $13, $14, $15::text::jsonb, ids.id, $16, $17, now() FROM ids
    ON CONFLICT (tenant_id, caller_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING *
),
job AS (
    INSERT INTO conveyor_jobs (
        id, tenant_id, queue, kind, priority, state, payload, max_attempts, run_at,
        timeout_s, unique_key, meta, created_at
    )
    SELECT req.job_id, $1, $2, $3, $4, 'queued', $5::text::jsonb, $6,
           coalesce(to_timestamp($7), now() + make_interval(secs => $8)), $9, $10,
           $11::text::jsonb, now()
    FROM req
    WHERE NOT EXISTS (SELECT FROM holder)
    RETURNING *
),
notified AS (
    SELECT pg_notify($12, 'q:' || queue) FROM job
),
found AS (
    -- Aliased where a job column has the same name, so the job's can be named below.
    SELECT r.id AS request_id, r.tenant_id AS request_tenant_id, r.caller_id,
           r.kind AS request_kind, r.input, r.idempotency_key, r.http_request_id,
           r.created_at AS request_created_at, j.*, true AS created
    FROM req r JOIN job j ON j.id = r.job_id
    UNION ALL
    SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key,
           r.http_request_id, r.created_at, j.*, true
    FROM req r JOIN conveyor_jobs j ON j.id = r.job_id
    UNION ALL
    SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key,
           r.http_request_id, r.created_at, j.*, false
    FROM existing r JOIN conveyor_jobs j ON j.id = r.job_id
)
SELECT f.*,
       CASE WHEN f.state = 'queued' THEN (
           SELECT count(*) FROM conveyor_jobs q
           WHERE q.state = 'queued' AND q.queue = f.queue AND q.run_at <= now()
             AND (q.priority, q.run_at, q.id) < (f.priority, f.run_at, f.id)
       ) END AS queue_position,
       (SELECT count(*) FROM notified) AS notified
FROM found f

-- name: create_requests
-- Plain requests (no Idempotency-Key, no job unique_key) that arrived together, in one
-- statement: their jobs, their requests, one NOTIFY per queue and each one's queue
-- position. The batch travels as one JSON document ($1) whose rows carry their ordinal;
-- job ids are drawn in the materialised CTE, so once per row.
--
-- A position counts the due queued jobs ahead that this statement's snapshot sees (not
-- the batch's own) plus the batch's due jobs ahead in the same queue.
WITH src AS MATERIALIZED (
    SELECT nextval('conveyor_jobs_id_seq'::regclass) AS job_id, s.*
    FROM jsonb_to_recordset($1::jsonb) AS s(
        ord int, tenant_id text, queue text, kind text, priority smallint, payload jsonb,
        max_attempts int, run_at float8, delay_s float8, timeout_s float8, meta jsonb,
        caller_id text, request_kind text, input jsonb, http_request_id text)
),
job AS (
    INSERT INTO conveyor_jobs (
        id, tenant_id, queue, kind, priority, state, payload, max_attempts, run_at,
        timeout_s, meta, created_at
    )
    SELECT job_id, tenant_id, queue, kind, priority, 'queued', coalesce(payload, 'null'),
           max_attempts, coalesce(to_timestamp(run_at), now() + make_interval(secs => delay_s)),
           timeout_s, meta, now()
    FROM src
    RETURNING *
),
req AS (
    INSERT INTO conveyor_requests (
        tenant_id, caller_id, kind, input, job_id, http_request_id, created_at
    )
    SELECT tenant_id, caller_id, request_kind, coalesce(input, 'null'), job_id,
           http_request_id, now()
    FROM src
    RETURNING *
),
notified AS (
    SELECT pg_notify($2, 'q:' || queue) FROM (SELECT DISTINCT queue FROM src) AS q
),
ranked AS (
    SELECT id, count(*) FILTER (WHERE run_at <= now()) OVER (
               PARTITION BY queue ORDER BY priority, run_at, id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS ahead
    FROM job
)
SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, r.http_request_id,
       r.created_at, j.*,
       k.ahead + (
           SELECT count(*) FROM conveyor_jobs q
           WHERE q.state = 'queued' AND q.queue = j.queue AND q.run_at <= now()
             AND (q.priority, q.run_at, q.id) < (j.priority, j.run_at, j.id)
       ) AS queue_position,
       s.ord,
       (SELECT count(*) FROM notified) AS notified
FROM req r
JOIN job j ON j.id = r.job_id
JOIN ranked k ON k.id = j.id
JOIN src s ON s.job_id = j.id

-- name: get_request
SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, r.http_request_id,
       r.created_at, j.*
FROM conveyor_requests r JOIN conveyor_jobs j ON j.id = r.job_id
WHERE r.id = $1 AND r.tenant_id = $2

-- name: queue_position
-- Queued, due jobs of the same queue that a worker will claim before this one.
SELECT count(*) FROM conveyor_jobs
WHERE state = 'queued' AND queue = $1 AND run_at <= now()
  AND (priority, run_at, id) < ($2, to_timestamp($3), $4)

-- part: offers
-- What the claim left free, per unlimited queue, is offered for handoff ($5: the key of
-- the caller's LISTEN connection; NULL offers nothing), for jobs of the kinds the caller
-- runs; the caller's other offers in the claimed queues are taken back.
spare AS (
    SELECT w.queue, w.kinds,
           w.n - (SELECT count(*) FROM claimed c WHERE c.queue = w.queue) AS slots
    FROM wanted w WHERE $5::bigint IS NOT NULL AND NOT w.limited
),
offered AS (
    INSERT INTO conveyor_offers (queue, worker_id, slots, lock_key, lease_s, kinds)
    SELECT queue, $3, slots, $5, $4, kinds FROM spare WHERE slots > 0
    ON CONFLICT (queue, worker_id) DO UPDATE
    SET slots = excluded.slots, lock_key = excluded.lock_key, lease_s = excluded.lease_s,
        kinds = excluded.kinds
    RETURNING queue
),
unoffered AS (
    DELETE FROM conveyor_offers
    WHERE worker_id = $3 AND queue = ANY($1::text[])
      AND queue NOT IN (SELECT queue FROM spare WHERE slots > 0)
)

-- part: notify_or_hand_off
-- The notice of the job just inserted (ins; $12: the channel): 'q:' and its queue when it
-- is queued; 'h:' and a JSON array when it was handed off — the worker, the job's id and
-- attempt and, when that fits in a notice (under 8000 bytes), the rest of the job in the
-- order the store decodes it, else the worker reads the job by id. Written out here, not
-- as a SQL function: a function call was planned at every call (+0.5 ms an enqueue). The
-- whole job is built in a subquery of the CASE's last branch, which only a handoff
-- reaches: as a lateral join it was built for every queued job too, and the planner moved
-- a WHERE inside it out to a join filter (about 20 us of an enqueue's 0.3 ms).
notified AS (
    SELECT pg_notify($12, CASE
               WHEN ins.locked_by IS NULL THEN 'q:' || ins.queue
               ELSE (
                   SELECT CASE WHEN octet_length(h.whole) < 7990 THEN h.whole
                          ELSE 'h:' || json_build_array(ins.locked_by, ins.id, ins.attempt)::text
                          END
                   FROM (SELECT 'h:' || json_build_array(
                       ins.locked_by, ins.id, ins.attempt, ins.tenant_id, ins.queue, ins.kind,
                       ins.priority, ins.payload, ins.max_attempts, extract(epoch FROM ins.run_at),
                       ins.timeout_s, ins.unique_key, extract(epoch FROM ins.lease_expires_at),
                       ins.meta, extract(epoch FROM ins.created_at),
                       extract(epoch FROM ins.started_at))::text) AS h(whole))
           END)
    FROM ins
)

-- part: claim_jobs
-- The claim proper, shared by exchange and claim: per wanted queue (wanted: queue, n,
-- kinds) the first n due jobs of those kinds in priority, run_at, id order, skipping rows
-- another claimer holds, made running under $3 with a lease of $4 seconds.
--
-- One limited walk of the claim index per (queue, kind) — its first n due rows, locked —
-- then the candidates of all kinds merged in claim order and the first n taken: strict
-- priority and FIFO hold across the kinds, and jobs of kinds the worker lacks are never
-- read, however many sit at the head of the queue. A filter on kind over one walk of the
-- queue would read past all of them. Candidates locked but not taken in the merge (at
-- most n per kind beyond the n taken) stay locked only until this statement commits;
-- meanwhile other claimers skip them as they skip any row being claimed.
picked AS (
    SELECT c.id
    FROM wanted w
    CROSS JOIN LATERAL (
        SELECT k.id
        FROM unnest(w.kinds) AS wk(kind)
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM conveyor_jobs
            WHERE state = 'queued' AND queue = w.queue AND kind = wk.kind AND run_at <= now()
            ORDER BY priority, run_at, id
            LIMIT greatest(w.n, 0)
            FOR UPDATE SKIP LOCKED
        ) k
        ORDER BY k.priority, k.run_at, k.id
        LIMIT greatest(w.n, 0)
    ) c
),
claimed AS (
    UPDATE conveyor_jobs j
    SET state = 'running',
        attempt = j.attempt + 1,
        locked_by = $3,
        lease_expires_at = now() + make_interval(secs => $4),
        started_at = now(),
        progress = NULL,
        progress_message = NULL
    -- = ANY(ARRAY(...)) rather than a join: the planner cannot size LIMIT n and would hash
    -- the whole table (measured: 17 ms of a 19 ms claim at 30,000 rows).
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.*
),
