-- A key's own limits beyond rpm/tpm, the same three a plan has: requests in flight,
-- spend per calendar month (integer micro-USD) and tokens per calendar month. NULL means
-- no key limit; the tenant's plan still applies to the tenant as a whole.
-- Same meaning as migrations/sqlite/0004_key_limits.sql; BIGINT where SQLite says INTEGER.
ALTER TABLE api_keys ADD COLUMN max_concurrent BIGINT CHECK (max_concurrent >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_budget_micro_usd BIGINT CHECK (monthly_budget_micro_usd >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_tokens BIGINT CHECK (monthly_tokens >= 0);
