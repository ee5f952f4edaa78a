-- fedgate cloud store, schema version 10 (PostgreSQL): what each node's
-- lockout counted, so the other nodes count it too (see the SQLite
-- migration of the same version). Appenders take an advisory lock of their
-- own, so sequence numbers commit in order, as the change feed's do.

CREATE TABLE lockout_events (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
    node      TEXT   NOT NULL,
    kind      TEXT   NOT NULL CHECK (kind IN ('failed', 'signed_in')),
    user_id   BIGINT,
    name      TEXT,
    client_ip TEXT   NOT NULL,
    reason    TEXT
);

CREATE INDEX lockout_events_at ON lockout_events (at);
