-- Sessions of the SQLite store: refresh tokens (rotated, revoked by family) and the keys
-- that sign access tokens. :now is the store's clock, passed by the transaction.

-- part: refresh_token_columns
-- In the order of the record's fields (checked at import), as every part *_columns.
id, family_id, user_id, tenant_id, token_hash, created_at, expires_at, rotated_at,
revoked_at

-- part: signing_key_columns
kid, algorithm, private_pem, public_pem, created_at, retired_at

-- name: insert_refresh_token
INSERT INTO conveyor_refresh_tokens (
    id, family_id, user_id, tenant_id, token_hash, created_at, expires_at
) VALUES (:id, :family_id, :user_id, :tenant_id, :token_hash, :now, :now + :ttl_s)
RETURNING
-- include: refresh_token_columns

-- name: find_refresh_token
SELECT
-- include: refresh_token_columns
FROM conveyor_refresh_tokens WHERE token_hash = :token_hash

-- name: mark_rotated
UPDATE conveyor_refresh_tokens SET rotated_at = :now WHERE id = :id

-- name: revoke_refresh_family
UPDATE conveyor_refresh_tokens SET revoked_at = :now
WHERE family_id = :family_id AND revoked_at IS NULL

-- name: revoke_user_tokens
-- :tenant_id NULL: the user's tokens of every tenant, and the tenantless ones.
UPDATE conveyor_refresh_tokens SET revoked_at = :now
WHERE user_id = :user_id AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND revoked_at IS NULL

-- name: signing_keys
SELECT
-- include: signing_key_columns
FROM conveyor_signing_keys ORDER BY created_at DESC, kid DESC

-- name: insert_signing_key
INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
VALUES (:kid, :algorithm, :private_pem, :public_pem, :now)

-- name: insert_first_signing_key
-- Only while no key is active; the write lock is held, so no other process can insert
-- one between the check and the insert.
INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
SELECT :kid, :algorithm, :private_pem, :public_pem, :now
WHERE NOT EXISTS (SELECT 1 FROM conveyor_signing_keys WHERE retired_at IS NULL)

-- name: retire_active_signing_keys
UPDATE conveyor_signing_keys SET retired_at = :now WHERE retired_at IS NULL

-- name: retire_signing_key
UPDATE conveyor_signing_keys SET retired_at = :now WHERE kid = :kid AND retired_at IS NULL
