-- The schema's own bookkeeping on the PostgreSQL store: which migrations are applied.

-- name: lock_migrations
-- Two processes starting at once: the second waits here, then finds the schema current.
SELECT pg_advisory_xact_lock(:key)

-- name: schema_table
CREATE TABLE IF NOT EXISTS conveyor_schema
    (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)

-- name: schema_exists
SELECT to_regclass('conveyor_schema') IS NOT NULL

-- name: schema_version
SELECT coalesce(max(version), 0) FROM conveyor_schema

-- name: schema_record
INSERT INTO conveyor_schema (version, applied_at) VALUES (:version, now())

-- name: job_columns
-- The columns of the jobs table in table order, which every SELECT * is decoded in.
SELECT column_name FROM information_schema.columns
WHERE table_name = 'conveyor_jobs' AND table_schema = current_schema()
ORDER BY ordinal_position
