-- A key's own limits beyond rpm/tpm, the same three a plan has: requests in flight,
-- spend per calendar month (integer micro-USD) and tokens per calendar month. NULL means
-- no key limit; the tenant's plan still applies to the tenant as a whole.
-- Numbered 0004 though 0005 came first: sqlx applies a missing lower version to a
-- database that already has later ones, and keeps the checksums of both.
ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER CHECK (max_concurrent >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_budget_micro_usd INTEGER CHECK (monthly_budget_micro_usd >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_tokens INTEGER CHECK (monthly_tokens >= 0);
