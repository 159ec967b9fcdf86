-- Webhook endpoints, their delivery log and their delivery slots on PostgreSQL. The clock
-- is the server's now(). Every statement names its tenant; the API's store also runs it
-- in that tenant's scope, held to its rows by row security (migrations 0014, 0015).

-- part: webhook_columns
-- In the order of Webhook's fields (checked at import).
id, tenant_id, url, event_types, description, enabled, secret, previous_secret,
previous_expires_at, consecutive_failures, disabled_reason, created_at, updated_at

-- part: delivery_columns
-- In the order of WebhookDelivery's fields (checked at import).
id, tenant_id, webhook_id, message_id, event_id, event_type, job_id, attempt, status_code,
latency_ms, response_excerpt, error, payload, created_at

-- name: insert_webhook
INSERT INTO conveyor_webhooks (
    tenant_id, url, event_types, description, enabled, secret, created_at, updated_at
) VALUES (
    :tenant_id, :url, :event_types::text[], :description, :enabled, :secret, now(), now()
)
RETURNING
-- include: webhook_columns

-- name: get_webhook
SELECT
-- include: webhook_columns
FROM conveyor_webhooks WHERE id = :webhook_id AND tenant_id = :tenant_id

-- name: list_webhooks
-- :before_id NULL: from the newest.
SELECT
-- include: webhook_columns
FROM conveyor_webhooks
WHERE tenant_id = :tenant_id AND (:before_id::bigint IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit

-- name: update_webhook
-- A NULL parameter leaves its column as it is. Enabling clears the failures and the
-- reason the endpoint was disabled.
UPDATE conveyor_webhooks SET
    url = coalesce(:url, url),
    event_types = coalesce(:event_types::text[], event_types),
    description = coalesce(:description, description),
    enabled = coalesce(:enabled, enabled),
    consecutive_failures = CASE WHEN :enabled::bool THEN 0 ELSE consecutive_failures END,
    disabled_reason = CASE WHEN :enabled::bool THEN NULL ELSE disabled_reason END,
    updated_at = now()
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: delete_webhook
DELETE FROM conveyor_webhooks WHERE id = :webhook_id AND tenant_id = :tenant_id

-- name: rotate_webhook_secret
UPDATE conveyor_webhooks SET
    previous_secret = secret,
    previous_expires_at = now() + make_interval(secs => :grace_s),
    secret = :secret,
    updated_at = now()
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: webhooks_for_tenants
-- The enabled endpoints of the tenants of a batch of events (:tenant_ids text[]).
SELECT
-- include: webhook_columns
FROM conveyor_webhooks
WHERE tenant_id = ANY(:tenant_ids::text[]) AND enabled
ORDER BY id

-- name: insert_delivery
INSERT INTO conveyor_webhook_deliveries (
    tenant_id, webhook_id, message_id, event_id, event_type, job_id, attempt, status_code,
    latency_ms, response_excerpt, error, payload, created_at
) VALUES (
    :tenant_id, :webhook_id, :message_id, :event_id, :event_type, :job_id, :attempt,
    :status_code, :latency_ms, :response_excerpt, :error, :payload::text::jsonb, now()
)
RETURNING
-- include: delivery_columns

-- name: count_delivery
-- The attempt counted against its endpoint, after lock_webhook in the same transaction
-- (so two attempts that end at once count one after the other): a success resets the
-- consecutive failures, a failure adds one, and the failure that reaches :disable_after
-- disables the endpoint.
UPDATE conveyor_webhooks SET
    consecutive_failures = CASE WHEN :succeeded::bool THEN 0 ELSE consecutive_failures + 1 END,
    enabled = enabled AND (:succeeded::bool OR consecutive_failures + 1 < :disable_after),
    disabled_reason = CASE
        WHEN enabled AND NOT :succeeded::bool AND consecutive_failures + 1 >= :disable_after
        THEN :reason ELSE disabled_reason END,
    updated_at = now()
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: list_deliveries
SELECT
-- include: delivery_columns
FROM conveyor_webhook_deliveries
WHERE webhook_id = :webhook_id AND tenant_id = :tenant_id
  AND (:before_id::bigint IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit

-- name: get_delivery
SELECT
-- include: delivery_columns
FROM conveyor_webhook_deliveries
WHERE id = :delivery_id AND webhook_id = :webhook_id AND tenant_id = :tenant_id

-- name: lock_webhook
-- Taken first in the slot's transaction: the takers of one endpoint's slots go one at a
-- time, so each counts the slots the one before it committed.
SELECT
-- include: webhook_columns
FROM conveyor_webhooks WHERE id = :webhook_id AND tenant_id = :tenant_id
FOR UPDATE

-- name: take_slot
-- A statement after the lock, so its snapshot sees every slot committed before it. Slots
-- past their lease are freed; a holder that holds one already keeps it (its lease
-- renewed); taken is whether the holder holds one now.
WITH lapsed AS (
    DELETE FROM conveyor_webhook_slots
    WHERE webhook_id = :webhook_id AND expires_at < now()
    RETURNING holder
),
live AS (
    SELECT holder FROM conveyor_webhook_slots
    WHERE webhook_id = :webhook_id AND expires_at >= now()
),
taken AS (
    INSERT INTO conveyor_webhook_slots (webhook_id, holder, tenant_id, expires_at)
    SELECT :webhook_id, :holder, :tenant_id, now() + make_interval(secs => :lease_s)
    WHERE (SELECT count(*) FROM live WHERE holder <> :holder) < :limit
    ON CONFLICT (webhook_id, holder) DO UPDATE SET expires_at = excluded.expires_at
    RETURNING holder
)
SELECT EXISTS (SELECT FROM taken) AS taken, (SELECT count(*) FROM lapsed) AS lapsed

-- name: release_slot
DELETE FROM conveyor_webhook_slots
WHERE webhook_id = :webhook_id AND tenant_id = :tenant_id AND holder = :holder
