-- fedgate cloud store, schema version 11 (PostgreSQL): the admin event log
-- (see the SQLite migration of the same version).

CREATE TABLE admin_events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    client  TEXT,
    action  TEXT   NOT NULL,
    target  TEXT,
    detail  TEXT   NOT NULL
);

CREATE INDEX admin_events_at ON admin_events (at);
