-- The event log of the PostgreSQL store: reading it, pruning it, and the cursors of its
-- consumers. (Events are written by the statements of the changes they tell of: enqueue,
-- requests, exchange, jobs.) Parameters are named (:name).

-- name: read_events
-- Committed events after :after_id (through :through_id; of :job_id, :kinds, :types: NULL
-- or empty is any), in id order, each with the first request of its job, and on every
-- row the snapshot's horizon read in the same statement: the oldest transaction still
-- running and the first one not yet begun. The snapshot row is there when no event is
-- (the events' columns NULL then). Every tenant's: the primary key's range from
-- :after_id.
-- include: read_events_head
-- include: read_events_where
-- include: read_events_tail

-- name: read_events_of_tenant
-- read_events for one tenant (:tenant_id), by the tenant's index: a statement of its own,
-- since the generic plan of a condition that may be NULL could not use that index.
-- include: read_events_head
-- include: read_events_where
      AND tenant_id = :tenant_id
-- include: read_events_tail

-- part: read_events_head
SELECT e.id, e.tenant_id, e.type, e.job_id, e.kind, e.queue, e.attempt, e.body, e.created_at,
       (SELECT r.id FROM conveyor_requests r WHERE r.job_id = e.job_id ORDER BY r.id LIMIT 1)
           AS request_id,
       pg_snapshot_xmin(s.snapshot)::text::bigint AS horizon_xmin,
       pg_snapshot_xmax(s.snapshot)::text::bigint AS horizon_xmax
FROM (SELECT pg_current_snapshot() AS snapshot) s
LEFT JOIN LATERAL (
    SELECT * FROM conveyor_events

-- part: read_events_where
    WHERE id > :after_id AND (:through_id::bigint IS NULL OR id <= :through_id)
      AND (:job_id::bigint IS NULL OR job_id = :job_id)
      AND (cardinality(:kinds::text[]) = 0 OR kind = ANY(:kinds))
      AND (cardinality(:types::text[]) = 0 OR type = ANY(:types))

-- part: read_events_tail
    ORDER BY id
    LIMIT :limit
) e ON true
ORDER BY e.id

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM conveyor_events

-- name: prune_events
-- In id order, a batch of at most :limit looked at: events are written in about the
-- order of their time, so the old ones are the first ids, and the index on id bounds
-- what each call reads however many younger events there are.
-- = ANY(ARRAY(...)) rather than IN: the planner cannot size LIMIT n and would hash the
-- whole table.
DELETE FROM conveyor_events
WHERE id = ANY(ARRAY(
    SELECT b.id
    FROM (SELECT id, created_at FROM conveyor_events ORDER BY id LIMIT :limit) b
    WHERE b.created_at < now() - make_interval(secs => :older_than_s)))

-- name: event_cursor
SELECT last_id FROM conveyor_event_cursors WHERE name = :name

-- name: create_event_cursor
-- A cursor that did not exist; no row back when another consumer created it first (its
-- insert waited for that one's commit).
INSERT INTO conveyor_event_cursors (name, last_id) VALUES (:name, :to)
ON CONFLICT (name) DO NOTHING
RETURNING name

-- name: move_event_cursor
-- A cursor moved only from where the caller read it (:expected); no row back when
-- another consumer moved it first.
UPDATE conveyor_event_cursors SET last_id = :to, updated_at = now()
WHERE name = :name AND last_id = :expected
RETURNING name
