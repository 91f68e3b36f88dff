-- Objects tenants created through the passthrough endpoints (files, fine-tuning jobs,
-- batches): the upstream knows them under one shared account, so the gateway remembers
-- which tenant made each id and shows a tenant only its own.
CREATE TABLE passthrough_objects (
    kind          TEXT    NOT NULL,   -- 'file', 'fine_tuning.job', 'batch'
    object_id     TEXT    NOT NULL,   -- the upstream's id (file-..., ftjob-..., batch_...)
    tenant_id     TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,   -- unix seconds
    PRIMARY KEY (kind, object_id)
) STRICT;

CREATE INDEX passthrough_objects_by_tenant ON passthrough_objects (tenant_id, kind);
