-- Tenants, users, memberships and invitations of the PostgreSQL store (the rest of the
-- accounts: accounts_sessions.sql, accounts_api_keys.sql). Parameters are named (:name);
-- the clock is the server's now(). The statements a verb checks before it writes lock
-- what they read (FOR UPDATE), so two such verbs at once take turns.
--
-- A verb for a tenant runs in its scope (the API's store: as conveyor_api, held to the
-- tenant's rows by row security, migration 0011). Users belong to no one tenant and are
-- reached through functions of that migration, as are the look-ups made before a tenant
-- is known (a user's memberships at login, an invitation by its token).

-- part: tenant_columns
-- In the order of Tenant's fields (checked at import), as every part *_columns below.
id, name, created_at, disabled, rate_limit

-- part: user_columns
id, email, password_hash, operator, disabled, created_at

-- part: member_columns
m.tenant_id, m.user_id, u.email, m.role, m.created_at

-- part: invitation_columns
id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at, accepted_at,
revoked

-- name: insert_tenant
INSERT INTO conveyor_tenants (id, name, created_at) VALUES (:tenant_id, :name, now())
RETURNING
-- include: tenant_columns

-- name: get_tenant
SELECT
-- include: tenant_columns
FROM conveyor_tenants WHERE id = :tenant_id

-- name: list_tenants
SELECT
-- include: tenant_columns
FROM conveyor_tenants ORDER BY created_at, id

-- name: set_tenant_disabled
UPDATE conveyor_tenants SET disabled = :disabled WHERE id = :tenant_id

-- name: set_tenant_rate_limit
UPDATE conveyor_tenants SET rate_limit = :rate_limit WHERE id = :tenant_id

-- name: insert_user
SELECT
-- include: user_columns
FROM conveyor_create_user(:user_id, :email, :password_hash, :operator)

-- name: get_user
SELECT
-- include: user_columns
FROM conveyor_user(:user_id)

-- name: get_user_by_email
SELECT
-- include: user_columns
FROM conveyor_user_by_email(:email)

-- name: list_users
-- Oldest first; refused in a tenant's scope.
SELECT
-- include: user_columns
FROM conveyor_list_users()

-- name: set_password_hash
SELECT conveyor_set_password_hash(:user_id, :password_hash)

-- name: set_user_disabled
SELECT conveyor_set_user_disabled(:user_id, :disabled)

-- name: insert_member
INSERT INTO conveyor_memberships (tenant_id, user_id, role, created_at)
VALUES (:tenant_id, :user_id, :role, now())

-- name: get_member
SELECT
-- include: member_columns
FROM conveyor_memberships m JOIN conveyor_users u ON u.id = m.user_id
WHERE m.tenant_id = :tenant_id AND m.user_id = :user_id

-- name: get_role
SELECT role FROM conveyor_memberships WHERE tenant_id = :tenant_id AND user_id = :user_id

-- name: insert_member_if_none
-- Accepting an invitation: a member already keeps the row, whose role the caller then
-- raises if the invitation's is higher.
INSERT INTO conveyor_memberships (tenant_id, user_id, role, created_at)
VALUES (:tenant_id, :user_id, :role, now())
ON CONFLICT (tenant_id, user_id) DO NOTHING

-- name: lock_role
SELECT role FROM conveyor_memberships WHERE tenant_id = :tenant_id AND user_id = :user_id
FOR UPDATE

-- name: memberships
-- Every tenant of the user (at login, before one is chosen), oldest first.
SELECT tenant_id, user_id, email, role, created_at FROM conveyor_user_memberships(:user_id)

-- name: list_members
SELECT
-- include: member_columns
FROM conveyor_memberships m JOIN conveyor_users u ON u.id = m.user_id
WHERE m.tenant_id = :tenant_id
ORDER BY m.created_at, m.user_id

-- name: tenant_owners
-- Locks the owners' rows: a second demotion or removal waits, then sees the first's
-- result (a row no longer an owner drops out), so the last owner is always kept.
SELECT user_id FROM conveyor_memberships WHERE tenant_id = :tenant_id AND role = 'owner'
FOR UPDATE

-- name: set_role
UPDATE conveyor_memberships SET role = :role WHERE tenant_id = :tenant_id AND user_id = :user_id

-- name: remove_member
DELETE FROM conveyor_memberships WHERE tenant_id = :tenant_id AND user_id = :user_id

-- name: insert_invitation
INSERT INTO conveyor_invitations (
    id, tenant_id, email, role, token_hash, invited_by, created_at, expires_at
) VALUES (
    :invitation_id, :tenant_id, :email, :role, :token_hash, :invited_by, now(),
    now() + make_interval(secs => :ttl_s)
)
RETURNING
-- include: invitation_columns

-- name: find_invitation
SELECT
-- include: invitation_columns
FROM conveyor_invitation_by_token(:token_hash)

-- name: lock_invitation
-- The invitation to accept, and whether it has expired by the server's clock; locked, so
-- a second acceptance waits and then sees it accepted.
SELECT
-- include: invitation_columns
, expires_at <= now() AS expired
FROM conveyor_invitations WHERE token_hash = :token_hash
FOR UPDATE

-- name: list_invitations
SELECT
-- include: invitation_columns
FROM conveyor_invitations WHERE tenant_id = :tenant_id
ORDER BY created_at DESC, id DESC

-- name: revoke_invitation
UPDATE conveyor_invitations SET revoked = true
WHERE tenant_id = :tenant_id AND id = :invitation_id AND NOT revoked AND accepted_at IS NULL

-- name: mark_invitation_accepted
UPDATE conveyor_invitations SET accepted_at = now() WHERE id = :invitation_id

-- name: enter_tenant
-- Accepting an invitation: the transaction, which started in no tenant's scope, takes
-- the scope of the invitation's tenant (found by its token) for what it does next.
SELECT set_config('conveyor.tenant_id', :tenant_id, true)
