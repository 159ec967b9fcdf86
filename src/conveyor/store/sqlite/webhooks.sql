-- Webhook endpoints, their delivery log and their delivery slots on SQLite. Times are
-- Unix seconds from the caller's clock (:now); lists are JSON arrays; booleans 0 or 1.
-- Every statement names its tenant.

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
    :tenant_id, :url, :event_types, :description, :enabled, :secret, :now, :now
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
WHERE tenant_id = :tenant_id AND (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit

-- name: update_webhook
-- A NULL parameter leaves its column as it is. Enabling clears the failures and the
-- reason the endpoint was disabled.
UPDATE conveyor_webhooks SET
    url = coalesce(:url, url),
    event_types = coalesce(:event_types, event_types),
    description = coalesce(:description, description),
    enabled = coalesce(:enabled, enabled),
    consecutive_failures = CASE WHEN :enabled THEN 0 ELSE consecutive_failures END,
    disabled_reason = CASE WHEN :enabled THEN NULL ELSE disabled_reason END,
    updated_at = :now
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: delete_webhook
DELETE FROM conveyor_webhooks WHERE id = :webhook_id AND tenant_id = :tenant_id

-- name: rotate_webhook_secret
UPDATE conveyor_webhooks SET
    previous_secret = secret,
    previous_expires_at = :now + :grace_s,
    secret = :secret,
    updated_at = :now
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: webhooks_for_tenants
-- The enabled endpoints of the tenants of a batch of events (:tenant_ids a JSON array).
SELECT
-- include: webhook_columns
FROM conveyor_webhooks
WHERE tenant_id IN (SELECT value FROM json_each(:tenant_ids)) AND enabled
ORDER BY id

-- name: insert_delivery
INSERT INTO conveyor_webhook_deliveries (
    tenant_id, webhook_id, message_id, event_id, event_type, job_id, attempt, status_code,
    latency_ms, response_excerpt, error, payload, created_at
) VALUES (
    :tenant_id, :webhook_id, :message_id, :event_id, :event_type, :job_id, :attempt,
    :status_code, :latency_ms, :response_excerpt, :error, :payload, :now
)
RETURNING
-- include: delivery_columns

-- name: count_delivery
-- The attempt counted against its endpoint (under the write lock): a success resets the
-- consecutive failures, a failure adds one, and the failure that reaches :disable_after
-- disables the endpoint.
UPDATE conveyor_webhooks SET
    consecutive_failures = CASE WHEN :succeeded THEN 0 ELSE consecutive_failures + 1 END,
    enabled = enabled AND (:succeeded OR consecutive_failures + 1 < :disable_after),
    disabled_reason = CASE
        WHEN enabled AND NOT :succeeded AND consecutive_failures + 1 >= :disable_after
        THEN :reason ELSE disabled_reason END,
    updated_at = :now
WHERE id = :webhook_id AND tenant_id = :tenant_id
RETURNING
-- include: webhook_columns

-- name: list_deliveries
SELECT
-- include: delivery_columns
FROM conveyor_webhook_deliveries
WHERE webhook_id = :webhook_id AND tenant_id = :tenant_id
  AND (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit

-- name: get_delivery
SELECT
-- include: delivery_columns
FROM conveyor_webhook_deliveries
WHERE id = :delivery_id AND webhook_id = :webhook_id AND tenant_id = :tenant_id

-- name: free_lapsed_slots
DELETE FROM conveyor_webhook_slots WHERE webhook_id = :webhook_id AND expires_at < :now

-- name: take_slot
-- Under the write lock, so the count is exact. A holder that holds one already keeps it
-- (its lease renewed).
INSERT INTO conveyor_webhook_slots (webhook_id, holder, tenant_id, expires_at)
SELECT :webhook_id, :holder, :tenant_id, :now + :lease_s
WHERE (SELECT count(*) FROM conveyor_webhook_slots
       WHERE webhook_id = :webhook_id AND holder <> :holder) < :limit
ON CONFLICT (webhook_id, holder) DO UPDATE SET expires_at = excluded.expires_at
RETURNING holder

-- name: release_slot
DELETE FROM conveyor_webhook_slots
WHERE webhook_id = :webhook_id AND tenant_id = :tenant_id AND holder = :holder
