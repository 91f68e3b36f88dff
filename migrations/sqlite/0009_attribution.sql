-- Attribution (issue 18): the end user and tags of each request, and two daily rollups that
-- usage queries read for `group_by=user|tag` and the `user=` / `tag=` filters. Same meaning
-- as migrations/postgres/0009_attribution.sql.
--
-- `end_user` NULL = none given; `tags` is the request's distinct tags joined with ','
-- (a tag never holds one), NULL = none. In the rollups, requests without an end user
-- count under end_user '', untagged ones under tag '' (so a group_by=tag report still
-- shows the untagged spend); a request with two tags counts under both. The tag rollup
-- keeps the end user too, so a tag's spend can be cut by user (and a user's by tag).
ALTER TABLE usage_records ADD COLUMN end_user TEXT;
ALTER TABLE usage_records ADD COLUMN tags TEXT;

CREATE TABLE usage_daily_users (
    tenant_id          TEXT    NOT NULL,
    day                INTEGER NOT NULL,
    end_user           TEXT    NOT NULL,
    key_id             TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    requests           INTEGER NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    images             INTEGER NOT NULL,
    cost_micro_usd     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, end_user, key_id, model)
) STRICT;
-- A tenant's month for one end user (`user=`) without reading its other users' rows.
CREATE INDEX usage_daily_users_by_user ON usage_daily_users (tenant_id, end_user, day);

CREATE TABLE usage_daily_tags (
    tenant_id          TEXT    NOT NULL,
    day                INTEGER NOT NULL,
    tag                TEXT    NOT NULL,
    end_user           TEXT    NOT NULL,
    key_id             TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    requests           INTEGER NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    images             INTEGER NOT NULL,
    cost_micro_usd     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day, tag, end_user, key_id, model)
) STRICT;
CREATE INDEX usage_daily_tags_by_tag ON usage_daily_tags (tenant_id, tag, day);

-- Usage recorded before this migration had neither: it counts under '' in both, so the
-- new reports add up to the old ones from the first day.
INSERT INTO usage_daily_users (tenant_id, day, end_user, key_id, model, requests, input_tokens,
    output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, images, cost_micro_usd)
SELECT tenant_id, day, '', key_id, model, requests, input_tokens, output_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, images, cost_micro_usd FROM usage_daily;
INSERT INTO usage_daily_tags (tenant_id, day, tag, end_user, key_id, model, requests, input_tokens,
    output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, images, cost_micro_usd)
SELECT tenant_id, day, '', '', key_id, model, requests, input_tokens, output_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, images, cost_micro_usd FROM usage_daily;
