-- Sessions of the PostgreSQL store: refresh tokens (rotated, revoked by family) and the
-- keys that sign access tokens. No tenant owns them, so each statement calls a function
-- of migration 0011 (SECURITY DEFINER: the API's role has no privilege on these tables).
-- The clock is the server's now(); the token to rotate is read FOR UPDATE (in
-- conveyor_lock_refresh_token), so two rotations of it take turns.

-- part: refresh_token_columns
-- In the order of the record's fields (checked at import), as every part *_columns.
id, family_id, user_id, tenant_id, token_hash, created_at, expires_at, rotated_at,
revoked_at

-- part: signing_key_columns
kid, algorithm, private_pem, public_pem, created_at, retired_at

-- name: insert_refresh_token
SELECT
-- include: refresh_token_columns
FROM conveyor_insert_refresh_token(:id, :family_id, :user_id, :tenant_id, :token_hash, :ttl_s)

-- name: lock_refresh_token
-- The token to rotate or revoke, and whether it has expired by the server's clock; locked
-- until the transaction ends, so a second rotation of it waits and then sees it rotated
-- (REUSED).
SELECT
-- include: refresh_token_columns
, expires_at <= now() AS expired
FROM conveyor_lock_refresh_token(:token_hash)

-- name: mark_rotated
SELECT conveyor_mark_refresh_token_rotated(:token_hash)

-- name: revoke_refresh_family
SELECT conveyor_revoke_refresh_family(:family_id)

-- name: revoke_user_tokens
-- :tenant_id NULL: the user's tokens of every tenant, and the tenantless ones.
SELECT conveyor_revoke_user_refresh_tokens(:user_id, :tenant_id::text)

-- name: signing_keys
-- Newest first; refused in a tenant's scope.
SELECT
-- include: signing_key_columns
FROM conveyor_signing_keys()

-- name: insert_first_signing_key
-- Only while no key is active, race-safe (see the function in migration 0011).
SELECT conveyor_ensure_signing_key(:kid, :algorithm, :private_pem, :public_pem)

-- name: add_signing_key
-- Retires the active key and stores this one active.
SELECT conveyor_add_signing_key(:kid, :algorithm, :private_pem, :public_pem)

-- name: retire_signing_key
SELECT conveyor_retire_signing_key(:kid)
