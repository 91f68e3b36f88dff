-- The usage ledger: one raw record per metered request, the ids already recorded, and a
-- daily rollup that usage queries, invoices and budgets read.
-- Same meaning as migrations/postgres/0003_usage.sql, without its monthly partitions:
-- `Store::prune_usage` deletes old rows here instead of dropping old months.
-- Times are unix milliseconds, booleans 0/1, money integer micro-USD.

CREATE TABLE usage_records (
    request_id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id           TEXT    NOT NULL,
    key_id              TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    deployment          TEXT    NOT NULL,
    endpoint            TEXT    NOT NULL,
    status              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_tokens       INTEGER NOT NULL,
    images              INTEGER NOT NULL,
    cost_micro_usd      INTEGER NOT NULL,
    cache_hit           INTEGER NOT NULL,
    usage_reported      INTEGER NOT NULL,
    client_disconnected INTEGER NOT NULL,
    latency_ms          INTEGER NOT NULL,
    ttft_ms             INTEGER,
    created_at_ms       INTEGER NOT NULL
) STRICT;
CREATE INDEX usage_records_by_time ON usage_records (created_at_ms);

-- Every request id ever recorded (until pruned): the ledger's idempotency key. A batch
-- inserts its ids here first (ON CONFLICT DO NOTHING) and writes only the records whose id
-- was new.
CREATE TABLE usage_request_ids (
    request_id    TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX usage_request_ids_by_time ON usage_request_ids (created_at_ms);

-- Per UTC day, tenant, key and model: sums of the raw records, kept up to date in the same
-- transaction that inserts them. `day` is the unix day number (days since 1970-01-01).
CREATE TABLE usage_daily (
    day            INTEGER NOT NULL,
    tenant_id      TEXT    NOT NULL,
    key_id         TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    requests       INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cached_tokens  INTEGER NOT NULL,
    images         INTEGER NOT NULL,
    cost_micro_usd INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, key_id, model)
) STRICT;
CREATE INDEX usage_daily_by_day ON usage_daily (day);

-- One row: raw records older than pruned_before_ms have been removed, their ids with them,
-- so a late copy of such a record is refused instead of being counted a second time.
CREATE TABLE usage_retention (
    id               INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    pruned_before_ms INTEGER NOT NULL
) STRICT;
INSERT INTO usage_retention (id, pruned_before_ms) VALUES (1, 0);
