-- The platform-wide rollup (issue 18): per UTC day and model, over every tenant. Usage
-- queries without a tenant, key, user or tag (`group_by=day|model`) read this instead of
-- summing every tenant's rows of `usage_daily`. Kept in the ledger's flush transaction like
-- the others; filled from `usage_daily` here. Same meaning as
-- migrations/postgres/0010_usage_daily_models.sql.
CREATE TABLE usage_daily_models (
    day                INTEGER NOT NULL,
    model              TEXT    NOT NULL,
    requests           INTEGER NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    images             INTEGER NOT NULL,
    cost_micro_usd     INTEGER NOT NULL,
    PRIMARY KEY (day, model)
) STRICT;

INSERT INTO usage_daily_models (day, model, requests, input_tokens, output_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, images, cost_micro_usd)
SELECT day, model, SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens),
    SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(images), SUM(cost_micro_usd)
FROM usage_daily GROUP BY day, model;
