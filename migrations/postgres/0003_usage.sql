-- The usage ledger: one raw record per metered request, the ids already recorded, and a
-- daily rollup that usage queries, invoices and budgets read.
-- Same meaning as migrations/sqlite/0003_usage.sql; here the raw table is partitioned by
-- month so that old months can be dropped whole (`Store::prune_usage`).
-- Times are unix milliseconds (BIGINT), booleans 0/1 (SMALLINT), money integer micro-USD.

-- Raw records, partitioned by RANGE on created_at_ms, one partition per UTC calendar
-- month named usage_records_pYYYYMM. Partitions are created on demand by the store before
-- it inserts a batch that needs them (`store::usage`), never by hand.
CREATE TABLE usage_records (
    request_id          TEXT COLLATE "C" NOT NULL,
    tenant_id           TEXT COLLATE "C" NOT NULL,
    key_id              TEXT COLLATE "C" NOT NULL,
    model               TEXT COLLATE "C" NOT NULL,
    deployment          TEXT     NOT NULL,
    endpoint            TEXT     NOT NULL,
    status              BIGINT   NOT NULL,
    input_tokens        BIGINT   NOT NULL,
    output_tokens       BIGINT   NOT NULL,
    cached_tokens       BIGINT   NOT NULL,
    images              BIGINT   NOT NULL,
    cost_micro_usd      BIGINT   NOT NULL,
    cache_hit           SMALLINT NOT NULL,
    usage_reported      SMALLINT NOT NULL,
    client_disconnected SMALLINT NOT NULL,
    latency_ms          BIGINT   NOT NULL,
    ttft_ms             BIGINT,
    created_at_ms       BIGINT   NOT NULL,
    -- Postgres requires the partition key in every unique index of a partitioned table, so
    -- this key alone cannot keep a request id unique across months: usage_request_ids does.
    PRIMARY KEY (request_id, created_at_ms)
) PARTITION BY RANGE (created_at_ms);

-- Every request id ever recorded (until pruned): the ledger's idempotency key across all
-- partitions. A batch inserts its ids here first (ON CONFLICT DO NOTHING) and writes only
-- the records whose id was new.
CREATE TABLE usage_request_ids (
    request_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX usage_request_ids_by_time ON usage_request_ids (created_at_ms);

-- Per UTC day, tenant, key and model: sums of the raw records, kept up to date in the same
-- transaction that inserts them. `day` is the unix day number (days since 1970-01-01).
CREATE TABLE usage_daily (
    day            BIGINT NOT NULL,
    tenant_id      TEXT COLLATE "C" NOT NULL,
    key_id         TEXT COLLATE "C" NOT NULL,
    model          TEXT COLLATE "C" NOT NULL,
    requests       BIGINT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cached_tokens  BIGINT NOT NULL,
    images         BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, key_id, model)
);
CREATE INDEX usage_daily_by_day ON usage_daily (day);

-- One row: raw records older than pruned_before_ms have been removed, their ids with them,
-- so a late copy of such a record is refused instead of being counted a second time.
CREATE TABLE usage_retention (
    id               SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    pruned_before_ms BIGINT   NOT NULL
);
INSERT INTO usage_retention (id, pruned_before_ms) VALUES (1, 0);
