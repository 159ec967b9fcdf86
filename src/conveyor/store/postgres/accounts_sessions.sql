-- Sessions of the PostgreSQL store: refresh tokens (rotated, revoked by family) and the
-- keys that sign access tokens. The clock is the server's now(); the token to rotate is
-- read FOR UPDATE, so two rotations of it take turns.

-- part: refresh_token_columns
-- In the order of the record's fields (checked at import), as every part *_columns.
id, family_id, user_id, tenant_id, token_hash, created_at, expires_at, rotated_at,
revoked_at

-- part: signing_key_columns
kid, algorithm, private_pem, public_pem, created_at, retired_at

-- name: insert_refresh_token
INSERT INTO conveyor_refresh_tokens (
    id, family_id, user_id, tenant_id, token_hash, created_at, expires_at
) VALUES (
    :id, :family_id, :user_id, :tenant_id, :token_hash, now(),
    now() + make_interval(secs => :ttl_s)
)
RETURNING
-- include: refresh_token_columns

-- name: find_refresh_token
SELECT
-- include: refresh_token_columns
FROM conveyor_refresh_tokens WHERE token_hash = :token_hash

-- name: lock_refresh_token
-- The token to rotate, and whether it has expired by the server's clock; locked, so a
-- second rotation of it waits and then sees it rotated (REUSED).
SELECT
-- include: refresh_token_columns
, expires_at <= now() AS expired
FROM conveyor_refresh_tokens WHERE token_hash = :token_hash
FOR UPDATE

-- name: mark_rotated
UPDATE conveyor_refresh_tokens SET rotated_at = now() WHERE id = :id

-- name: revoke_refresh_family
UPDATE conveyor_refresh_tokens SET revoked_at = now()
WHERE family_id = :family_id AND revoked_at IS NULL

-- name: revoke_user_tokens
-- :tenant_id NULL: the user's tokens of every tenant, and the tenantless ones.
UPDATE conveyor_refresh_tokens SET revoked_at = now()
WHERE user_id = :user_id AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
  AND revoked_at IS NULL

-- name: signing_keys
SELECT
-- include: signing_key_columns
FROM conveyor_signing_keys ORDER BY created_at DESC, kid DESC

-- name: insert_signing_key
INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
VALUES (:kid, :algorithm, :private_pem, :public_pem, now())

-- name: insert_first_signing_key
-- Only while no key is active. Two processes at once can both find none; the second
-- insert then waits for the first on the index conveyor_signing_keys_active, which
-- holds one active key, and does nothing once it commits.
INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
SELECT :kid, :algorithm, :private_pem, :public_pem, now()
WHERE NOT EXISTS (SELECT FROM conveyor_signing_keys WHERE retired_at IS NULL)
ON CONFLICT ((retired_at IS NULL)) WHERE retired_at IS NULL DO NOTHING

-- name: retire_active_signing_keys
UPDATE conveyor_signing_keys SET retired_at = now() WHERE retired_at IS NULL

-- name: retire_signing_key
UPDATE conveyor_signing_keys SET retired_at = now() WHERE kid = :kid AND retired_at IS NULL
