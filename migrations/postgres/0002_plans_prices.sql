-- Plans (limits and budgets a tenant's keys share) and prices (what a model costs).
-- Money is integer micro-USD (1 USD = 1 000 000), so sums and invoices are exact; the
-- admin API shows it as decimal strings. NULL limits mean unlimited.
-- Same meaning as migrations/sqlite/0002_plans_prices.sql; BIGINT where SQLite says INTEGER.

CREATE TABLE plans (
    name                     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    rpm                      BIGINT CHECK (rpm >= 0),
    tpm                      BIGINT CHECK (tpm >= 0),
    max_concurrent           BIGINT CHECK (max_concurrent >= 0),
    monthly_budget_micro_usd BIGINT CHECK (monthly_budget_micro_usd >= 0),
    monthly_tokens           BIGINT CHECK (monthly_tokens >= 0)
);

-- Every tenant's plan is a row: "default" (unlimited until an operator PUTs it), and any
-- plan a tenant was given before this table existed (unlimited, as it was then).
INSERT INTO plans (name) VALUES ('default');
INSERT INTO plans (name) SELECT DISTINCT plan FROM tenants WHERE plan <> 'default';

CREATE TABLE prices (
    model                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- micro-USD per 1M tokens (0.15 USD / 1M tokens = 150000)
    input_micro_usd        BIGINT NOT NULL CHECK (input_micro_usd >= 0),
    output_micro_usd       BIGINT NOT NULL CHECK (output_micro_usd >= 0),
    cached_input_micro_usd BIGINT NOT NULL CHECK (cached_input_micro_usd >= 0),
    -- micro-USD per generated image; NULL = not priced per image
    image_micro_usd        BIGINT CHECK (image_micro_usd >= 0)
);
