-- SQLite statements of the event log (conveyor/store/sqlite/events.py). Parameters are
-- named (:name) and bound as ?1.. (see conveyor/store/sqlfile.py); times are Unix seconds.
-- One writer commits at a time, so ids (AUTOINCREMENT) are in commit order.

-- -- writing, in the transaction of the change ---------------------------------------------
-- name: insert_queued
-- job.queued of the jobs an enqueue just inserted (ids :first to :last, consecutive: the
-- enqueue takes them from sqlite_sequence under the write lock), in id order: one statement
-- for a whole batch, reading back rows the insert left in the page cache.
INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body, created_at)
SELECT tenant_id, 'job.queued', id, kind, queue, attempt,
       json_object('priority', priority, 'run_at', run_at), :now
FROM conveyor_jobs
WHERE id BETWEEN :first AND :last
ORDER BY id

-- name: insert_events
-- The events of changes just made, :events a JSON array of [job_id, type, body] in the
-- order of the changes; tenant, kind, queue and attempt come from the job's row as the
-- change left it. One statement per transaction however many jobs changed.
INSERT INTO conveyor_events (tenant_id, type, job_id, kind, queue, attempt, body, created_at)
SELECT j.tenant_id, e.value ->> 1, j.id, j.kind, j.queue, j.attempt, e.value -> 2, :now
FROM json_each(:events) AS e CROSS JOIN conveyor_jobs AS j
WHERE j.id = e.value ->> 0
ORDER BY e.key

-- -- reading -----------------------------------------------------------------------------
-- name: last_event_id
-- sqlite_sequence, not max(id): the ids go on from there after the newest were pruned.
SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'conveyor_events'), 0)

-- part: event_columns
-- In the order of Event's fields (checked by the store at import).
e.id, e.tenant_id, e.type, e.job_id, e.kind, e.queue, e.attempt, e.body, e.created_at AS at,
r.id AS request_id

-- part: read_events
-- Assembled by conveyor/store/filters.py. A reader reads after the last id it saw: a
-- range of the primary key, or of (tenant_id, id) for one tenant's.
SELECT
-- include: event_columns
FROM conveyor_events AS e LEFT JOIN conveyor_requests AS r ON r.job_id = e.job_id

-- part: read_events_where_after_id
e.id > :after_id

-- part: read_events_where_through_id
e.id <= :through_id

-- part: read_events_where_tenant_id
e.tenant_id = :tenant_id

-- part: read_events_where_job_id
e.job_id = :job_id

-- part: read_events_where_kinds
e.kind IN (SELECT value FROM json_each(:kinds))

-- part: read_events_where_types
e.type IN (SELECT value FROM json_each(:types))

-- part: read_events_tail
ORDER BY e.id LIMIT :limit

-- -- pruning -----------------------------------------------------------------------------
-- name: prune_events
-- Of the :limit oldest events (lowest ids), those written before :before. Ids follow
-- commit order and times the writers' clocks, so old events come first: the walk stops
-- after :limit rows however many recent events the log holds, with no index on the time.
DELETE FROM conveyor_events
WHERE id IN (SELECT id FROM conveyor_events ORDER BY id LIMIT :limit) AND created_at < :before

-- -- the consumers' cursors --------------------------------------------------------------
-- name: event_cursor
SELECT last_id FROM conveyor_event_cursors WHERE name = :name

-- name: create_event_cursor
INSERT INTO conveyor_event_cursors (name, last_id, updated_at) VALUES (:name, :to, :now)
ON CONFLICT (name) DO NOTHING

-- name: move_event_cursor
-- Guarded on where the consumer read it: a consumer that lost the race moves nothing.
UPDATE conveyor_event_cursors SET last_id = :to, updated_at = :now
WHERE name = :name AND last_id = :expected
