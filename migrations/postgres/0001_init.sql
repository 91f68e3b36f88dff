-- Tenants and their API keys.
-- Times are unix seconds (BIGINT), booleans 0/1 (SMALLINT): the types sqlx's Any driver
-- carries identically on SQLite and Postgres (see migrations/sqlite/0001_init.sql).
-- Ids use the "C" collation so `ORDER BY id` / `id > $1` paging is bytewise, as on SQLite.

CREATE TABLE tenants (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- ten_ + 16 base62
    name       TEXT     NOT NULL UNIQUE,
    plan       TEXT     NOT NULL DEFAULT 'default',
    disabled   SMALLINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at BIGINT   NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- the key's public id
    tenant_id    TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    name         TEXT     NOT NULL,
    prefix       TEXT     NOT NULL,                     -- tg-<public id>, shown in listings
    secret_hash  BYTEA    NOT NULL,                     -- SHA-256 of the secret, never the secret
    models       TEXT     NOT NULL DEFAULT '[]',        -- JSON array; empty = all models
    expires_at   BIGINT,
    rpm          BIGINT CHECK (rpm >= 0),
    tpm          BIGINT CHECK (tpm >= 0),
    revoked_at   BIGINT,
    created_at   BIGINT   NOT NULL,
    last_used_at BIGINT
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);
