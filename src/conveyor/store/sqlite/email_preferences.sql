-- Email preferences of the SQLite store: which events email which member of a tenant
-- (migration 0009). Lists are JSON arrays of strings; :now is the store's clock, passed
-- by the transaction.

-- part: preference_columns
-- In the order of EmailPreferences' fields (checked at import). Unqualified: RETURNING
-- takes them so on SQLite, and no column of conveyor_users has these names.
tenant_id, user_id, event_types, kinds, enabled, updated_at

-- part: contact_columns
-- In the order of EmailContact's fields (checked at import).
m.tenant_id, m.user_id, u.email, m.role, p.enabled, p.unsubscribe_token

-- name: get_email_preferences
SELECT
-- include: preference_columns
FROM conveyor_email_preferences p WHERE p.tenant_id = :tenant_id AND p.user_id = :user_id

-- name: set_email_preferences
-- A member's row replaced whole, with a new unsubscribe token. The membership's foreign
-- key refuses a user who is not a member of the tenant.
INSERT INTO conveyor_email_preferences (
    tenant_id, user_id, event_types, kinds, enabled, unsubscribe_token, updated_at
) VALUES (
    :tenant_id, :user_id, :event_types, :kinds, :enabled, :token, :now
)
ON CONFLICT (tenant_id, user_id) DO UPDATE
SET event_types = excluded.event_types, kinds = excluded.kinds, enabled = excluded.enabled,
    unsubscribe_token = excluded.unsubscribe_token, updated_at = excluded.updated_at
RETURNING
-- include: preference_columns

-- name: email_recipients
-- Every tenant of a batch of events at once (the dispatcher's one query per batch): the
-- members whose preferences are on and name one of the batch's event types.
SELECT u.email,
-- include: preference_columns
FROM conveyor_email_preferences p JOIN conveyor_users u ON u.id = p.user_id
WHERE p.tenant_id IN (SELECT value FROM json_each(:tenant_ids)) AND p.enabled
  AND EXISTS (
      SELECT 1 FROM json_each(p.event_types) AS t
      WHERE t.value IN (SELECT value FROM json_each(:event_types))
  )
ORDER BY p.tenant_id, p.user_id

-- name: email_contacts
SELECT
-- include: contact_columns
FROM conveyor_memberships m
JOIN conveyor_users u ON u.id = m.user_id
LEFT JOIN conveyor_email_preferences p
    ON p.tenant_id = m.tenant_id AND p.user_id = m.user_id
WHERE m.tenant_id = :tenant_id
ORDER BY m.created_at, m.user_id

-- name: unsubscribe_email
-- The updated_at of preferences already off is kept: nothing changed.
UPDATE conveyor_email_preferences
SET enabled = 0, updated_at = CASE WHEN enabled THEN :now ELSE updated_at END
WHERE unsubscribe_token = :token
RETURNING
-- include: preference_columns
