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
-- Several notices in one statement and one commit that writes nothing (so no WAL flush
-- to wait for under the notify lock).
SELECT pg_notify(:channel, p) FROM unnest(:payloads::text[]) AS p

-- name: hold_offer_key
SELECT pg_advisory_lock(:key)
