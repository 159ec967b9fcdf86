-- API keys of the PostgreSQL store: a tenant's keys for server-to-server callers, found
-- by their prefix. The clock is the server's now(). A key is found and touched before its
-- tenant is known, through functions of migrations 0011 and 0012; the rest run in the
-- tenant's scope (or an operator's), held to its rows by row security.

-- part: api_key_columns
-- In the order of ApiKey's fields (checked at import).
id, tenant_id, prefix, secret_hash, name, scopes, created_by, created_at, last_used_at,
expires_at, revoked_at

-- name: insert_api_key
-- :ttl_s NULL: a key that never expires (now() + NULL is NULL).
INSERT INTO conveyor_api_keys (
    id, tenant_id, prefix, secret_hash, name, scopes, created_by, created_at, expires_at
) VALUES (
    :id, :tenant_id, :prefix, :secret_hash, :name, :scopes::text::jsonb, :created_by, now(),
    now() + make_interval(secs => :ttl_s)
)
RETURNING
-- include: api_key_columns

-- name: find_api_keys
-- The keys of :prefixes (text[]) that exist, as the login role (a store that acts as no
-- role).
SELECT
-- include: api_key_columns
FROM unnest(:prefixes::text[]) AS wanted (wanted_prefix),
     conveyor_api_key_by_prefix(wanted.wanted_prefix)

-- name: find_api_keys_as_role
-- The same as :role in the scope of no tenant, taken by the function: a statement of its
-- own, so both end with it (migration 0012).
SELECT
-- include: api_key_columns
FROM unnest(:prefixes::text[]) AS wanted (wanted_prefix),
     conveyor_api_key_by_prefix_as(:role, wanted.wanted_prefix)

-- name: touch_api_key
SELECT conveyor_touch_api_key(:key_id)

-- name: list_api_keys
SELECT
-- include: api_key_columns
FROM conveyor_api_keys WHERE tenant_id = :tenant_id
ORDER BY created_at DESC, id DESC

-- name: list_all_api_keys
SELECT
-- include: api_key_columns
FROM conveyor_api_keys
ORDER BY created_at DESC, id DESC

-- name: revoke_api_key
-- :tenant_id NULL: a key of any tenant (an operator's call).
UPDATE conveyor_api_keys SET revoked_at = now()
WHERE id = :key_id AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id) AND revoked_at IS NULL
