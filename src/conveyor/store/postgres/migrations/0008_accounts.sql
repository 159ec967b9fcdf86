-- Accounts: tenants, users and their memberships, invitations, refresh tokens, API keys
-- and the keys that sign access tokens. Secrets are kept as SHA-256 hex digests only.
-- Who made an invitation or a key (invited_by, created_by) is kept as text without a
-- foreign key, so that the record outlives the user it names.

-- Tenant ids travel in URLs, logs and the conveyor.tenant_id setting: nothing to quote.
CREATE TABLE conveyor_tenants (
    id         text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    disabled   boolean     NOT NULL DEFAULT false,
    rate_limit text
);

-- Emails are stored normalised (lower-cased, stripped) by the service, so a plain unique
-- index makes them unique.
CREATE TABLE conveyor_users (
    id            text PRIMARY KEY,
    email         text        NOT NULL,
    password_hash text,
    operator      boolean     NOT NULL DEFAULT false,
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX conveyor_users_email ON conveyor_users (email);

-- A tenant's members by the primary key's prefix; a user's tenants by the second index.
CREATE TABLE conveyor_memberships (
    tenant_id  text        NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    user_id    text        NOT NULL REFERENCES conveyor_users (id) ON DELETE CASCADE,
    role       text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX conveyor_memberships_user ON conveyor_memberships (user_id);

CREATE TABLE conveyor_invitations (
    id          text PRIMARY KEY,
    tenant_id   text        NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    email       text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash  text        NOT NULL,
    invited_by  text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    revoked     boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX conveyor_invitations_token ON conveyor_invitations (token_hash);
CREATE INDEX conveyor_invitations_tenant ON conveyor_invitations (tenant_id, created_at);

-- tenant_id is NULL for an operator's session without a tenant. Rotation finds a token by
-- its hash; reuse and logout revoke its family; a user's tokens are revoked together.
CREATE TABLE conveyor_refresh_tokens (
    id         text PRIMARY KEY,
    family_id  text        NOT NULL,
    user_id    text        NOT NULL REFERENCES conveyor_users (id) ON DELETE CASCADE,
    tenant_id  text REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    token_hash text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX conveyor_refresh_tokens_token ON conveyor_refresh_tokens (token_hash);
CREATE INDEX conveyor_refresh_tokens_family ON conveyor_refresh_tokens (family_id);
CREATE INDEX conveyor_refresh_tokens_user ON conveyor_refresh_tokens (user_id, tenant_id);

-- A key is found by its prefix (the part of its text shown in listings); scopes are a
-- JSON array of scope names.
CREATE TABLE conveyor_api_keys (
    id           text PRIMARY KEY,
    tenant_id    text        NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    prefix       text        NOT NULL,
    secret_hash  text        NOT NULL,
    name         text        NOT NULL,
    scopes       jsonb       NOT NULL,
    created_by   text,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX conveyor_api_keys_prefix ON conveyor_api_keys (prefix);
CREATE INDEX conveyor_api_keys_tenant ON conveyor_api_keys (tenant_id, created_at);

-- At most one active (not retired) key: the index holds one entry, true, for it, so two
-- processes creating the first key at once cannot both succeed.
CREATE TABLE conveyor_signing_keys (
    kid         text PRIMARY KEY,
    algorithm   text        NOT NULL,
    private_pem text        NOT NULL,
    public_pem  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    retired_at  timestamptz
);
CREATE UNIQUE INDEX conveyor_signing_keys_active ON conveyor_signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;
