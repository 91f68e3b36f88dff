-- Money right to the token (issue 18). Same meaning as migrations/postgres/0008_money.sql.
--
-- Prices: cache writes (5-minute and 1-hour TTL), batch input / output and training, USD
-- per 1M tokens in micro-USD. NULL = the provider's published rule (cache_write = 1.25 ×
-- input, cache_write_1h = 2 × input, batch_* = input / output), resolved when read, so a
-- later change of `input` moves them too; training NULL = not priced.
ALTER TABLE prices ADD COLUMN cache_write_micro_usd INTEGER CHECK (cache_write_micro_usd >= 0);
ALTER TABLE prices ADD COLUMN cache_write_1h_micro_usd INTEGER CHECK (cache_write_1h_micro_usd >= 0);
ALTER TABLE prices ADD COLUMN batch_input_micro_usd INTEGER CHECK (batch_input_micro_usd >= 0);
ALTER TABLE prices ADD COLUMN batch_output_micro_usd INTEGER CHECK (batch_output_micro_usd >= 0);
ALTER TABLE prices ADD COLUMN training_micro_usd INTEGER CHECK (training_micro_usd >= 0);

-- Per request and in the daily rollup: the part of input_tokens written to the provider's
-- prompt cache, and the part of output_tokens spent reasoning.
ALTER TABLE usage_records ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
