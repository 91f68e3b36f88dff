-- Budget alerts and webhooks (issue 18). Same meaning in both stores
-- (migrations/postgres and migrations/sqlite 0012_webhooks.sql).
--
-- alert_thresholds_pct: JSON array of integers 1..=100, sorted, distinct; NULL = [80, 100].
ALTER TABLE plans ADD COLUMN alert_thresholds_pct TEXT;
ALTER TABLE api_keys ADD COLUMN alert_thresholds_pct TEXT;

-- Webhook endpoints. events: JSON array of event types. The secret signs deliveries; it is
-- shown once, in the create response.
CREATE TABLE webhooks (
    id         TEXT COLLATE "C"  NOT NULL PRIMARY KEY,  -- wh_ + 16 base62
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled   BIGINT NOT NULL DEFAULT 0
);

-- The outbox: one row per event, written in the transaction that caused it (for budget
-- events, the ledger flush that crossed the threshold). dedupe_key makes an event once:
-- 'budget|<scope>|<threshold_pct>|<period>' (scope 'tenant:<id>' or 'key:<id>'),
-- 'key.expiring|<key>|<expires_at>'; NULL for events that cannot repeat (key.revoked).
CREATE TABLE webhook_events (
    id         TEXT COLLATE "C"  NOT NULL PRIMARY KEY,  -- evt_ + 24 base62, the body's id
    type       TEXT NOT NULL,
    body       TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    created_at BIGINT NOT NULL
);

-- One delivery per (event, endpoint subscribed when the event was written).
CREATE TABLE webhook_deliveries (
    event_id           TEXT COLLATE "C"  NOT NULL REFERENCES webhook_events (id),
    webhook_id         TEXT COLLATE "C"  NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    delivered_at       BIGINT,
    gave_up_at         BIGINT,
    last_status        BIGINT,
    PRIMARY KEY (event_id, webhook_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- Who delivers: one replica at a time holds this row until expires_at_ms.
CREATE TABLE webhook_lease (
    id            BIGINT NOT NULL PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
