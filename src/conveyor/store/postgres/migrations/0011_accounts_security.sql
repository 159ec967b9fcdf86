-- Row security for the accounts tables (migration 0008), as 0009 gave the jobs and
-- requests: the API's role conveyor_api sees and changes one tenant's memberships,
-- invitations and API keys (and its own tenant's row) at a time, and reaches what no
-- tenant owns (users, refresh tokens, signing keys) and what it needs before a tenant is
-- known (a key by its prefix, a refresh token or invitation by its hash, a user by email,
-- the tenants of a user at login) only through the functions below, each SECURITY
-- DEFINER (it runs as the migrating role, which owns the tables), with its search_path
-- pinned to this schema, returning only the row or count its caller needs.
-- docs/operations.md ("Database roles and row security") says what each role may do.
--
-- conveyor_worker is given nothing here: workers never read the accounts.

-- Tenant-owned: every row names its tenant (a tenant's own row by its id). ENABLE, not
-- FORCE, as in 0009: the owner (migrations, the CLI) stays exempt.
ALTER TABLE conveyor_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_api_keys ENABLE ROW LEVEL SECURITY;
-- Not tenant-owned: a user belongs to several tenants; refresh tokens and signing keys
-- are reached through the functions only. Row security with no policy for a role shows
-- it no row, so a grant made by mistake later still exposes nothing.
ALTER TABLE conveyor_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE conveyor_signing_keys ENABLE ROW LEVEL SECURITY;

-- What the accounts verbs run for a tenant need, and no more: no DELETE but of a
-- membership (removing a member), UPDATE of the columns the verbs change only.
GRANT SELECT, INSERT ON conveyor_tenants, conveyor_memberships, conveyor_invitations,
    conveyor_api_keys TO conveyor_api;
GRANT UPDATE (disabled, rate_limit) ON conveyor_tenants TO conveyor_api;
GRANT UPDATE (role), DELETE ON conveyor_memberships TO conveyor_api;
GRANT UPDATE (revoked, accepted_at) ON conveyor_invitations TO conveyor_api;
GRANT UPDATE (revoked_at) ON conveyor_api_keys TO conveyor_api;
-- A tenant's member listings show each member's email: those two columns, of the users
-- who are members of the tenant set (policy below), and not the password hash.
GRANT SELECT (id, email) ON conveyor_users TO conveyor_api;

CREATE POLICY conveyor_api_tenant ON conveyor_tenants TO conveyor_api
    USING (id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
CREATE POLICY conveyor_api_tenant ON conveyor_memberships TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
CREATE POLICY conveyor_api_tenant ON conveyor_invitations TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
CREATE POLICY conveyor_api_tenant ON conveyor_api_keys TO conveyor_api
    USING (tenant_id = current_setting('conveyor.tenant_id', true)
           OR current_setting('conveyor.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true)
                OR current_setting('conveyor.operator', true) = 'on');
-- The members of the tenant set (the subquery is itself held to that tenant's
-- memberships), or every user for an operator.
CREATE POLICY conveyor_api_member ON conveyor_users FOR SELECT TO conveyor_api
    USING (current_setting('conveyor.operator', true) = 'on'
           OR EXISTS (SELECT FROM conveyor_memberships m
                      WHERE m.user_id = conveyor_users.id
                        AND m.tenant_id = current_setting('conveyor.tenant_id', true)));

-- Users: created (signup, an invited signup), found by id or by email (login), their
-- password hash replaced (a rehash at login), disabled, listed (operators).
CREATE FUNCTION conveyor_create_user(p_id text, p_email text, p_password_hash text,
                                     p_operator boolean)
RETURNS SETOF conveyor_users LANGUAGE sql SECURITY DEFINER
AS $$
    INSERT INTO conveyor_users (id, email, password_hash, operator, created_at)
    VALUES (p_id, p_email, p_password_hash, p_operator, now())
    RETURNING *
$$;

CREATE FUNCTION conveyor_user(p_id text)
RETURNS SETOF conveyor_users LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT * FROM conveyor_users WHERE id = p_id $$;

CREATE FUNCTION conveyor_user_by_email(p_email text)
RETURNS SETOF conveyor_users LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT * FROM conveyor_users WHERE email = p_email $$;

CREATE FUNCTION conveyor_set_password_hash(p_id text, p_password_hash text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_users SET password_hash = p_password_hash WHERE id = p_id RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

CREATE FUNCTION conveyor_set_user_disabled(p_id text, p_disabled boolean)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_users SET disabled = p_disabled WHERE id = p_id RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

-- Every user with its password hash: never in a tenant's scope.
CREATE FUNCTION conveyor_list_users()
RETURNS SETOF conveyor_users LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    IF coalesce(current_setting('conveyor.tenant_id', true), '') <> '' THEN
        RAISE EXCEPTION 'every user is not listed in the scope of tenant %',
            current_setting('conveyor.tenant_id', true)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY SELECT * FROM conveyor_users ORDER BY created_at, id;
END
$$;

-- At login, before a tenant is chosen: the tenants one user belongs to.
CREATE FUNCTION conveyor_user_memberships(p_user_id text)
RETURNS TABLE (tenant_id text, user_id text, email text, role text, created_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT m.tenant_id, m.user_id, u.email, m.role, m.created_at
    FROM conveyor_memberships m JOIN conveyor_users u ON u.id = m.user_id
    WHERE m.user_id = p_user_id
    ORDER BY m.created_at, m.tenant_id
$$;

-- An invitation by the hash of its token (a secret): which tenant accepting it joins.
CREATE FUNCTION conveyor_invitation_by_token(p_token_hash text)
RETURNS SETOF conveyor_invitations LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT * FROM conveyor_invitations WHERE token_hash = p_token_hash $$;

-- Refresh tokens: stored at login, locked by hash to rotate or revoke (the lock lasts
-- until the caller's transaction ends), marked rotated by hash, revoked by family or
-- by user.
CREATE FUNCTION conveyor_insert_refresh_token(p_id text, p_family_id text, p_user_id text,
                                              p_tenant_id text, p_token_hash text,
                                              p_ttl_s double precision)
RETURNS SETOF conveyor_refresh_tokens LANGUAGE sql SECURITY DEFINER
AS $$
    INSERT INTO conveyor_refresh_tokens (
        id, family_id, user_id, tenant_id, token_hash, created_at, expires_at
    ) VALUES (
        p_id, p_family_id, p_user_id, p_tenant_id, p_token_hash, now(),
        now() + make_interval(secs => p_ttl_s)
    )
    RETURNING *
$$;

CREATE FUNCTION conveyor_lock_refresh_token(p_token_hash text)
RETURNS SETOF conveyor_refresh_tokens LANGUAGE sql SECURITY DEFINER
AS $$ SELECT * FROM conveyor_refresh_tokens WHERE token_hash = p_token_hash FOR UPDATE $$;

CREATE FUNCTION conveyor_mark_refresh_token_rotated(p_token_hash text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_refresh_tokens SET rotated_at = now()
        WHERE token_hash = p_token_hash AND rotated_at IS NULL RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

CREATE FUNCTION conveyor_revoke_refresh_family(p_family_id text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_refresh_tokens SET revoked_at = now()
        WHERE family_id = p_family_id AND revoked_at IS NULL RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

-- p_tenant_id NULL: the user's tokens of every tenant, and the tenantless ones.
CREATE FUNCTION conveyor_revoke_user_refresh_tokens(p_user_id text, p_tenant_id text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_refresh_tokens SET revoked_at = now()
        WHERE user_id = p_user_id AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
          AND revoked_at IS NULL
        RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

-- API keys: found by prefix to authenticate a call, and the time of last use recorded.
CREATE FUNCTION conveyor_api_key_by_prefix(p_prefix text)
RETURNS SETOF conveyor_api_keys LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT * FROM conveyor_api_keys WHERE prefix = p_prefix $$;

CREATE FUNCTION conveyor_touch_api_key(p_id text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_api_keys SET last_used_at = now() WHERE id = p_id RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

-- Signing keys, private halves included (the API signs access tokens): never read in a
-- tenant's scope.
CREATE FUNCTION conveyor_signing_keys()
RETURNS SETOF conveyor_signing_keys LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    IF coalesce(current_setting('conveyor.tenant_id', true), '') <> '' THEN
        RAISE EXCEPTION 'signing keys are not read in the scope of tenant %',
            current_setting('conveyor.tenant_id', true)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY SELECT * FROM conveyor_signing_keys ORDER BY created_at DESC, kid DESC;
END
$$;

-- Only while no key is active. Two processes at once can both find none; the second
-- insert then waits for the first on the index conveyor_signing_keys_active, which holds
-- one active key, and does nothing once it commits.
CREATE FUNCTION conveyor_ensure_signing_key(p_kid text, p_algorithm text, p_private_pem text,
                                            p_public_pem text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH added AS (
        INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
        SELECT p_kid, p_algorithm, p_private_pem, p_public_pem, now()
        WHERE NOT EXISTS (SELECT FROM conveyor_signing_keys WHERE retired_at IS NULL)
        ON CONFLICT ((retired_at IS NULL)) WHERE retired_at IS NULL DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM added
$$;

-- A rotation: the active key retired and the new one active, in the caller's transaction.
CREATE FUNCTION conveyor_add_signing_key(p_kid text, p_algorithm text, p_private_pem text,
                                         p_public_pem text)
RETURNS void LANGUAGE sql SECURITY DEFINER
AS $$
    UPDATE conveyor_signing_keys SET retired_at = now() WHERE retired_at IS NULL;
    INSERT INTO conveyor_signing_keys (kid, algorithm, private_pem, public_pem, created_at)
    VALUES (p_kid, p_algorithm, p_private_pem, p_public_pem, now());
$$;

CREATE FUNCTION conveyor_retire_signing_key(p_kid text)
RETURNS integer LANGUAGE sql SECURITY DEFINER
AS $$
    WITH changed AS (
        UPDATE conveyor_signing_keys SET retired_at = now()
        WHERE kid = p_kid AND retired_at IS NULL RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;

-- Each function: its search_path pinned to this schema (a caller's own search_path, or
-- an object it created in another schema, cannot change what a name in the body means),
-- and callable by conveyor_api alone. PostgreSQL grants EXECUTE to PUBLIC by default,
-- which would let every role, conveyor_worker included, run them as the owner.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef
          AND p.proname IN (
              'conveyor_create_user', 'conveyor_user', 'conveyor_user_by_email',
              'conveyor_set_password_hash', 'conveyor_set_user_disabled',
              'conveyor_list_users', 'conveyor_user_memberships',
              'conveyor_invitation_by_token', 'conveyor_insert_refresh_token',
              'conveyor_lock_refresh_token', 'conveyor_mark_refresh_token_rotated',
              'conveyor_revoke_refresh_family', 'conveyor_revoke_user_refresh_tokens',
              'conveyor_api_key_by_prefix', 'conveyor_touch_api_key',
              'conveyor_signing_keys', 'conveyor_ensure_signing_key',
              'conveyor_add_signing_key', 'conveyor_retire_signing_key')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO conveyor_api', fn);
    END LOOP;
END
$$;
