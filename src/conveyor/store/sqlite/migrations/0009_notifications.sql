-- Issue 13: the event log (an outbox written in the transaction of each change it tells
-- of), the cursors of its consumers, webhook endpoints and their deliveries, and each
-- member's email preferences. Lists (event types, kinds) are JSON arrays of strings;
-- booleans are 0 or 1; times are Unix seconds.

-- AUTOINCREMENT: an id is never used twice, even after the newest events were pruned, so
-- a client resuming from an id never misses an event that took its number. SQLite
-- commits one writer at a time, so ids are in commit order: readers see no gaps.
CREATE TABLE conveyor_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    job_id     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    queue      TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    body       TEXT    NOT NULL DEFAULT '{}',
    created_at REAL    NOT NULL
);
CREATE INDEX conveyor_events_tenant ON conveyor_events (tenant_id, id);

CREATE TABLE conveyor_event_cursors (
    name       TEXT PRIMARY KEY NOT NULL,
    last_id    INTEGER NOT NULL,
    updated_at REAL    NOT NULL
);

CREATE TABLE conveyor_webhooks (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id            TEXT    NOT NULL,
    url                  TEXT    NOT NULL,
    event_types          TEXT    NOT NULL,
    description          TEXT    NOT NULL DEFAULT '',
    enabled              INTEGER NOT NULL DEFAULT 1,
    secret               TEXT    NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  REAL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason      TEXT,
    created_at           REAL    NOT NULL,
    updated_at           REAL    NOT NULL
);
CREATE INDEX conveyor_webhooks_tenant ON conveyor_webhooks (tenant_id, id);

CREATE TABLE conveyor_webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id        TEXT    NOT NULL,
    webhook_id       INTEGER NOT NULL REFERENCES conveyor_webhooks (id) ON DELETE CASCADE,
    message_id       TEXT    NOT NULL,
    event_id         INTEGER,
    event_type       TEXT    NOT NULL,
    job_id           INTEGER,
    attempt          INTEGER NOT NULL,
    status_code      INTEGER,
    latency_ms       REAL,
    response_excerpt TEXT,
    error            TEXT,
    payload          TEXT    NOT NULL,
    created_at       REAL    NOT NULL
);
CREATE INDEX conveyor_webhook_deliveries_webhook ON conveyor_webhook_deliveries (webhook_id, id);
CREATE INDEX conveyor_webhook_deliveries_created ON conveyor_webhook_deliveries (created_at);

CREATE TABLE conveyor_email_preferences (
    tenant_id        TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    event_types      TEXT    NOT NULL,
    kinds            TEXT    NOT NULL DEFAULT '[]',
    enabled          INTEGER NOT NULL DEFAULT 1,
    unsubscribe_token TEXT   NOT NULL,
    updated_at       REAL    NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES conveyor_memberships (tenant_id, user_id)
        ON DELETE CASCADE
);
CREATE UNIQUE INDEX conveyor_email_preferences_unsubscribe
    ON conveyor_email_preferences (unsubscribe_token);
