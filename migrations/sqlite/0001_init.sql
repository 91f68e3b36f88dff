-- Tenants and their API keys.
-- Times are unix seconds (INTEGER), booleans 0/1: the types sqlx's Any driver carries
-- identically on SQLite and Postgres (see migrations/postgres/0001_init.sql).

CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,           -- ten_ + 16 base62
    name       TEXT    NOT NULL UNIQUE,
    plan       TEXT    NOT NULL DEFAULT 'default',
    disabled   INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,         -- the key's public id
    tenant_id    TEXT    NOT NULL REFERENCES tenants (id),
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,                     -- tg-<public id>, shown in listings
    secret_hash  BLOB    NOT NULL,                     -- SHA-256 of the secret, never the secret
    models       TEXT    NOT NULL DEFAULT '[]',        -- JSON array; empty = all models
    expires_at   INTEGER,
    rpm          INTEGER CHECK (rpm >= 0),
    tpm          INTEGER CHECK (tpm >= 0),
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
) STRICT;

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);
