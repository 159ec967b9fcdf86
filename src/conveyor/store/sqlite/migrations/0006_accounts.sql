-- Accounts: tenants, users and their memberships, invitations, refresh tokens, API keys
-- and the keys that sign access tokens. Secrets are kept as SHA-256 hex digests only.
-- Who made an invitation or a key (invited_by, created_by) is kept as text without a
-- foreign key, so that the record outlives the user it names. Booleans are 0 or 1.

-- Tenant ids travel in URLs, logs and settings: nothing to quote. The CHECK is
-- ^[A-Za-z0-9_-]{1,64}$ (SQLite has no regular expressions; GLOB's class does it).
CREATE TABLE conveyor_tenants (
    id         TEXT PRIMARY KEY NOT NULL
               CHECK (length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9_-]*'),
    name       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    disabled   INTEGER NOT NULL DEFAULT 0,
    rate_limit TEXT
);

-- Emails are stored normalised (lower-cased, stripped) by the service, so a plain unique
-- index makes them unique.
CREATE TABLE conveyor_users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT,
    operator      INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL    NOT NULL
);
CREATE UNIQUE INDEX conveyor_users_email ON conveyor_users (email);

-- A tenant's members by the primary key's prefix; a user's tenants by the second index.
CREATE TABLE conveyor_memberships (
    tenant_id  TEXT NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES conveyor_users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX conveyor_memberships_user ON conveyor_memberships (user_id);

CREATE TABLE conveyor_invitations (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT    NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    email       TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash  TEXT    NOT NULL,
    invited_by  TEXT,
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    accepted_at REAL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX conveyor_invitations_token ON conveyor_invitations (token_hash);
CREATE INDEX conveyor_invitations_tenant ON conveyor_invitations (tenant_id, created_at);

-- tenant_id is NULL for an operator's session without a tenant. Rotation finds a token by
-- its hash; reuse and logout revoke its family; a user's tokens are revoked together.
CREATE TABLE conveyor_refresh_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    family_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES conveyor_users (id) ON DELETE CASCADE,
    tenant_id  TEXT REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    rotated_at REAL,
    revoked_at REAL
);
CREATE UNIQUE INDEX conveyor_refresh_tokens_token ON conveyor_refresh_tokens (token_hash);
CREATE INDEX conveyor_refresh_tokens_family ON conveyor_refresh_tokens (family_id);
CREATE INDEX conveyor_refresh_tokens_user ON conveyor_refresh_tokens (user_id, tenant_id);

-- A key is found by its prefix (the part of its text shown in listings); scopes are a
-- JSON array of scope names.
CREATE TABLE conveyor_api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES conveyor_tenants (id) ON DELETE CASCADE,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    name         TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_by   TEXT,
    created_at   REAL NOT NULL,
    last_used_at REAL,
    expires_at   REAL,
    revoked_at   REAL
);
CREATE UNIQUE INDEX conveyor_api_keys_prefix ON conveyor_api_keys (prefix);
CREATE INDEX conveyor_api_keys_tenant ON conveyor_api_keys (tenant_id, created_at);

-- At most one active (not retired) key: the index holds one entry for it, so a second
-- active key is refused whichever process writes it.
CREATE TABLE conveyor_signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    algorithm   TEXT NOT NULL,
    private_pem TEXT NOT NULL,
    public_pem  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    retired_at  REAL
);
CREATE UNIQUE INDEX conveyor_signing_keys_active ON conveyor_signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;
