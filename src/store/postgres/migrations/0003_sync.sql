-- fedgate cloud store, schema version 3 (PostgreSQL): the scheduled
-- directory sync.

-- DNs of the user's groups, one per line, sorted
ALTER TABLE users ADD COLUMN groups TEXT;
-- when the directory password last changed, as the directory spells it
ALTER TABLE users ADD COLUMN password_changed TEXT;

-- One row per sync pass, newest kept per kind for `fedgate sync status`
-- (older rows are pruned).
CREATE TABLE sync_passes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind IN ('full', 'incremental')),
    outcome     TEXT   NOT NULL CHECK (outcome IN ('completed', 'guarded', 'failed')),
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    seen        BIGINT NOT NULL,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL,
    disabled    BIGINT NOT NULL,
    enabled     BIGINT NOT NULL,
    deleted     BIGINT NOT NULL,
    errors      BIGINT NOT NULL,
    server      TEXT,
    message     TEXT
);

CREATE INDEX sync_passes_kind ON sync_passes (kind, started_at);

-- Where the next incremental pass starts, and who may run a pass.
CREATE TABLE sync_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    -- high-water mark of the change attribute, and the server it is from
    -- (AD USNs are per domain controller)
    mark         TEXT,
    mark_server  TEXT,
    -- one pass at a time across processes and nodes
    lease_holder TEXT,
    lease_until  BIGINT
);

INSERT INTO sync_state (id) VALUES (1);
