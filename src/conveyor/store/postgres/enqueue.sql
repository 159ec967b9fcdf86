-- Enqueue statements of the PostgreSQL store: one job (with handoff), a batch, the ids of a
-- COPY and its events, a periodic tick. Parameters are named (:name); the clock is the
-- server's now(). With :events each writes the job.queued events of the jobs it inserts
-- (part queued_events) and its NOTIFY says so ('e').

-- name: insert_job
-- One job, plain parameters: the latency path (the batch statement's JSON unpacking cost
-- more than the insert). No row back means an active job holds its unique_key.
--
-- The job is handed to a waiting worker (see conveyor_offers) when it is due now, its
-- queue is neither paused nor limited (nor has a tenant with a concurrency cap), a live
-- worker that runs its kind offers a free slot there, and the queue holds no due queued
-- job of a kind that worker runs (which would have to run first; jobs of kinds it cannot
-- run do not stop the handoff): it is inserted running under that worker, attempt 1, and
-- its NOTIFY carries it. Otherwise it is queued
-- and the NOTIFY wakes the workers to claim it. Of several offers the one with the most
-- free slots takes it; an offer another enqueue holds is skipped, not waited for.
WITH taker AS (
    SELECT o.worker_id, o.lease_s
    FROM conveyor_offers o
    -- For each offer the filters on o leave, the first due job in the claim index's range
    -- of each kind it serves, in the index's own order, so that only the index can answer
    -- it: without the ORDER BY, or written as NOT EXISTS over kind = ANY(o.kinds), the
    -- generic plan reads the jobs table sequentially, past every queued job of the kinds
    -- the offer does not serve. Any due job of any tenant stops the handoff: the claim
    -- must choose whose turn it is.
    LEFT JOIN LATERAL (
        SELECT true AS due
        FROM unnest(o.kinds) AS ok(kind)
        CROSS JOIN LATERAL (
            SELECT FROM conveyor_jobs q
            WHERE q.state = 'queued' AND q.queue = :queue AND q.kind = ok.kind
              AND q.run_at <= now()
            ORDER BY q.tenant_id, q.priority, q.run_at, q.id
            LIMIT 1
        ) head
        LIMIT 1
    ) ahead ON true
    WHERE o.queue = :queue AND o.slots > 0 AND :kind = ANY(o.kinds)
      AND :run_at::float8 IS NULL AND :delay_s::float8 <= 0
      AND ahead.due IS NULL
      -- o.queue, not :queue: a condition on the offer is only looked at when there is one.
      AND NOT EXISTS (
          SELECT FROM conveyor_queues s
          WHERE s.name = o.queue
            AND (s.paused OR s.concurrency_limit IS NOT NULL OR s.tenant_caps))
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
    SELECT nextval('conveyor_jobs_id_seq'::regclass), :tenant_id, :queue, :kind, :priority,
           CASE WHEN t.worker_id IS NULL THEN 'queued' ELSE 'running' END,
           :payload::jsonb, :max_attempts,
           coalesce(to_timestamp(:run_at), now() + make_interval(secs => :delay_s)), :timeout_s,
           :unique_key, :meta::jsonb, now(), CASE WHEN t.worker_id IS NULL THEN 0 ELSE 1 END,
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
-- include: queued_events
-- include: notify_or_hand_off
SELECT id, (SELECT count(*) FROM notified) AS notified, locked_by IS NOT NULL AS handed_off
FROM ins

-- part: notify_or_hand_off
-- The notice of the job just inserted (ins, on :channel): 'q:' and its queue when it is
-- queued; 'h:' and a JSON array when it was handed off — the worker, the job's id and
-- attempt and, when that fits in a notice (under 8000 bytes), the rest of the job in the
-- order of HANDOFF_COLUMNS (rows.py), which decodes it; else the worker reads the job by
-- id. With :events, 'e' too (its job.queued event). Written out here, not as a SQL
-- function: a function call was planned at every call.
-- The whole job is built in a subquery of the CASE's last branch, which only a handoff
-- reaches: as a lateral join it was built for every queued job too, and the planner moved
-- a WHERE inside it out to a join filter.
notified AS (
    SELECT pg_notify(:channel, CASE
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
    UNION ALL
    SELECT pg_notify(:channel, 'e') FROM ins WHERE :events::boolean
)

-- name: insert_jobs
-- A whole batch travels as one JSON document that the server unpacks: encoding a dozen
-- parameter arrays element by element in the driver cost more than the insert itself.
-- Ids are drawn in the CTE (materialised, so once per row) and come back as one array in
-- input order, with the ordinals of the rows not inserted because an active job holds
-- their unique_key.
WITH src AS MATERIALIZED (
    SELECT nextval('conveyor_jobs_id_seq'::regclass) AS id, j.*
    FROM jsonb_to_recordset(:batch::jsonb) AS j(
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
    RETURNING id, tenant_id, queue, kind, priority, run_at
),
-- include: queued_events
-- One NOTIFY per queue (on :channel), and 'e' for the events; sent at commit, so a worker
-- never wakes before the jobs are visible. Referenced below, or PostgreSQL would not
-- evaluate it.
notified AS (
    SELECT pg_notify(:channel, 'q:' || queue) FROM (SELECT DISTINCT queue FROM src) AS q
    UNION ALL
    SELECT pg_notify(:channel, 'e') WHERE :events::boolean AND EXISTS (SELECT FROM ins)
)
SELECT array_agg(src.id ORDER BY src.ord) AS ids,
       array_agg(src.ord ORDER BY src.ord) FILTER (WHERE ins.id IS NULL) AS conflicts,
       (SELECT count(*) FROM notified) AS notified
FROM src LEFT JOIN ins ON ins.id = src.id

-- name: reserve_ids
-- For a bulk COPY: ids in input order, and the server's clock for run_at and created_at.
-- The sequence is named, not looked up per row: pg_get_serial_sequence() in the select
-- list cost more than the nextval() calls themselves.
SELECT array_agg(nextval('conveyor_jobs_id_seq'::regclass)) AS ids, now() AS now
FROM generate_series(1, :count)

-- name: copied_jobs
-- After a COPY of the jobs :ids, in its transaction: their job.queued events (read back
-- from the rows, whose run_at and created_at the COPY may have left to the defaults) and
-- the notices, one per queue (:queues) and 'e'.
WITH ins AS (
    SELECT id, tenant_id, queue, kind, priority, run_at FROM conveyor_jobs
    WHERE id = ANY(:ids::bigint[]) AND :events::boolean
),
-- include: queued_events
notified AS (
    SELECT pg_notify(:channel, 'q:' || q) FROM unnest(:queues::text[]) AS q
    UNION ALL
    SELECT pg_notify(:channel, 'e') WHERE :events::boolean
)
SELECT count(*) FROM notified

-- name: find_active_unique
SELECT k.tenant_id, k.unique_key, j.id
FROM unnest(:tenant_ids::text[], :unique_keys::text[]) AS k(tenant_id, unique_key)
JOIN conveyor_jobs j
  ON j.tenant_id = k.tenant_id AND j.unique_key = k.unique_key
 AND j.state IN ('queued', 'running')

-- name: insert_tick
INSERT INTO conveyor_periodic_ticks (kind, tick, job_id)
VALUES (:kind, to_timestamp(:tick), :job_id)
ON CONFLICT DO NOTHING
RETURNING job_id

-- part: queued_events
-- The job.queued events of the jobs just inserted (ins: id, tenant_id, queue, kind,
-- priority, run_at), in id order, when :events. A new job's attempt is 0, a handed-off
-- one's included (its start is a live event). Written whether or not it is referenced:
-- PostgreSQL runs every data-modifying CTE to completion.
queued_events AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body)
    SELECT q.tenant_id, 'job.queued', q.id, q.kind, q.queue, 0,
           jsonb_build_object('priority', q.priority, 'run_at', extract(epoch FROM q.run_at))
    FROM ins q
    WHERE :events::boolean
    ORDER BY q.id
),
