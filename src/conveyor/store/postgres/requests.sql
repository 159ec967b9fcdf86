-- The requests of the PostgreSQL store: what a user asked for, created with its job (and,
-- with :events, the job's job.queued event: part queued_events). Parameters are named
-- (:name); the clock is the server's now().

-- name: create_request
-- A POST in one statement and one round trip: the request, its job (with its NOTIFY) and
-- its queue position. The job's parameters are insert_job's.
--
-- The request goes in first, with a job id drawn up front, and the job only if the
-- request did: an Idempotency-Key this tenant used before conflicts, and then no job is
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
--
-- A key is the tenant's, whichever of its callers (users, API keys) sent it (migration
-- 0013): a retry through another credential of the tenant returns the same request.
WITH existing AS (
    SELECT * FROM conveyor_requests
    WHERE tenant_id = :tenant_id AND idempotency_key = :idempotency_key
),
holder AS (
    SELECT id FROM conveyor_jobs
    WHERE tenant_id = :tenant_id AND unique_key = :unique_key
      AND state IN ('queued', 'running')
),
ids AS MATERIALIZED (
    SELECT coalesce((SELECT id FROM holder), nextval('conveyor_jobs_id_seq'::regclass)) AS id
    WHERE NOT EXISTS (SELECT FROM existing)
),
req AS (
    INSERT INTO conveyor_requests (
        tenant_id, caller_id, kind, input, job_id, idempotency_key, http_request_id, created_at
    )
    SELECT :tenant_id, :caller_id, :request_kind, :input::text::jsonb, ids.id,
           :idempotency_key, :http_request_id, now()
    FROM ids
    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING *
),
job AS (
    INSERT INTO conveyor_jobs (
        id, tenant_id, queue, kind, priority, state, payload, max_attempts, run_at,
        timeout_s, unique_key, meta, created_at
    )
    SELECT req.job_id, :tenant_id, :queue, :kind, :priority, 'queued',
           :payload::text::jsonb, :max_attempts,
           coalesce(to_timestamp(:run_at), now() + make_interval(secs => :delay_s)),
           :timeout_s, :unique_key, :meta::text::jsonb, now()
    FROM req
    WHERE NOT EXISTS (SELECT FROM holder)
    RETURNING *
),
-- include: queued_events
notified AS (
    SELECT pg_notify(:channel, 'q:' || queue) FROM job
    UNION ALL
    SELECT pg_notify(:channel, 'e') FROM job WHERE :events::boolean
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
             AND q.tenant_id = f.tenant_id
             AND (q.priority, q.run_at, q.id) < (f.priority, f.run_at, f.id)
       ) END AS queue_position,
       (SELECT count(*) FROM notified) AS notified
FROM found f

-- name: create_requests
-- Plain requests (no Idempotency-Key, no job unique_key) that arrived together, in one
-- statement: their jobs, their requests, one NOTIFY per queue and each one's queue
-- position. The batch travels as one JSON document (:batch) whose rows carry their ordinal;
-- job ids are drawn in the materialised CTE, so once per row.
--
-- A position counts the due queued jobs of the same tenant ahead that this statement's
-- snapshot sees (not the batch's own) plus the batch's due jobs ahead in the same queue.
-- A batch holds one tenant's requests (see requests.py), so that the API's role, which
-- sees one tenant's rows at a time, can write it.
WITH src AS MATERIALIZED (
    SELECT nextval('conveyor_jobs_id_seq'::regclass) AS job_id, s.*
    FROM jsonb_to_recordset(:batch::jsonb) AS s(
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
-- include: queued_events
notified AS (
    SELECT pg_notify(:channel, 'q:' || queue) FROM (SELECT DISTINCT queue FROM src) AS q
    UNION ALL
    SELECT pg_notify(:channel, 'e') WHERE :events::boolean
),
ranked AS (
    SELECT id, count(*) FILTER (WHERE run_at <= now()) OVER (
               PARTITION BY tenant_id, queue ORDER BY priority, run_at, id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS ahead
    FROM job
)
SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, r.http_request_id,
       r.created_at, j.*,
       k.ahead + (
           SELECT count(*) FROM conveyor_jobs q
           WHERE q.state = 'queued' AND q.queue = j.queue AND q.run_at <= now()
             AND q.tenant_id = j.tenant_id
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
WHERE r.id = :request_id AND r.tenant_id = :tenant_id

-- name: queue_position
-- Queued, due jobs of the same queue and tenant that a worker will claim before this one:
-- claims take tenants in turn, and other tenants' work is theirs to know.
SELECT count(*) FROM conveyor_jobs
WHERE state = 'queued' AND queue = :queue AND tenant_id = :tenant_id AND run_at <= now()
  AND (priority, run_at, id) < (:priority, to_timestamp(:run_at), :job_id)

-- part: list_requests
-- Newest first; the filter's conditions are parts below, named after its fields.
SELECT r.id, r.tenant_id, r.caller_id, r.kind, r.input, r.idempotency_key, r.http_request_id,
       r.created_at, j.*
FROM conveyor_requests r JOIN conveyor_jobs j ON j.id = r.job_id

-- part: list_requests_where_tenant_id
r.tenant_id = :tenant_id

-- part: list_requests_where_state
j.state = :state

-- part: list_requests_where_kind
r.kind = :kind

-- part: list_requests_where_created_after
r.created_at >= to_timestamp(:created_after)

-- part: list_requests_where_created_before
r.created_at < to_timestamp(:created_before)

-- part: list_requests_where_before_id
r.id < :before_id

-- part: list_requests_tail
ORDER BY r.id DESC LIMIT :limit

-- part: queued_events
-- The job.queued events of the jobs just inserted (job), in id order, when :events (as
-- the part of the same name in enqueue.sql).
queued_events AS (
    INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body)
    SELECT j.tenant_id, 'job.queued', j.id, j.kind, j.queue, 0,
           jsonb_build_object('priority', j.priority, 'run_at', extract(epoch FROM j.run_at))
    FROM job j
    WHERE :events::boolean
    ORDER BY j.id
),
