-- A key's usage without its tenant (`GET /admin/v1/usage?key=`): the rollup's primary key
-- leads with tenant_id, so without this index such a query reads every rollup row of the
-- range (about 1 s over a 10M-record ledger, bench/scale); with it, only the key's rows.
-- Same meaning as migrations/sqlite/0006_usage_daily_by_key.sql.
CREATE INDEX usage_daily_by_key ON usage_daily (key_id, day);
