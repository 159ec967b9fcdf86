-- Notices of the PostgreSQL store on its channel (:channel), sent at commit: 'q:' a queue
-- may have jobs available, 'c:' a running job was asked to cancel, 'l:' a queue's limit
-- changed. (Handoffs, 'h:', are sent by the enqueue that makes them: enqueue.sql; so is
-- 'e', events were appended, by the statements that write events with a NOTIFY of their
-- own.) The store sends 'e' for its other changes, and 'v:' live events, after their
-- commit (notify_payloads, announcer.py).
--
-- hold_offer_key is run by the LISTEN connection, which holds the lock for as long as it
-- lives: an offer carrying the key is live while the lock is held (see conveyor_offers).
-- It carries no comment of its own: tests and operators find LISTEN connections in
-- pg_stat_activity by this statement's text.

-- name: notify_queues
SELECT pg_notify(:channel, 'q:' || q) FROM unnest(:queues::text[]) AS q

-- name: notify_cancel
SELECT pg_notify(:channel, 'c:' || :job_id::bigint)

-- name: notify_limit
-- Every store reloads the queues that have a limit when it hears this.
SELECT pg_notify(:channel, 'l:' || :queue::text)

-- name: notify_payloads
-- Several notices (:payloads, tags included) in one statement and one commit that writes
-- no row. A notifying commit still takes a transaction id and writes a commit record, with
-- the cluster's notify lock held; synchronous_commit is off for this transaction alone
-- (set_config's is_local), so that the lock is not held through that record's flush: a
-- notice needs no durability.
SELECT count(pg_notify(:channel, p))
FROM set_config('synchronous_commit', 'off', true) AS s, unnest(:payloads::text[]) AS p

-- name: hold_offer_key
SELECT pg_advisory_lock(:key)
