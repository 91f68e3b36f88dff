-- Audio priced without tokens (issue 19): per minute of audio transcribed or translated,
-- per 1M characters spoken. micro-USD; NULL = the model is not priced so.
ALTER TABLE prices ADD COLUMN per_audio_minute_micro_usd BIGINT CHECK (per_audio_minute_micro_usd >= 0);
ALTER TABLE prices ADD COLUMN per_1m_characters_micro_usd BIGINT CHECK (per_1m_characters_micro_usd >= 0);
