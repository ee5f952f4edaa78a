-- fedgate cloud store, schema version 11: the admin event log, one row per
-- administrative change (an admin API call or a CLI command that changed
-- something): who did it, from where, what, to whom. Never a secret.

CREATE TABLE admin_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    -- 'token:NAME' (admin API), 'cli' or 'cli:USER' (command line)
    actor   TEXT    NOT NULL,
    -- the client's address, for the admin API
    client  TEXT,
    -- such as 'user.add', 'app_password.delete'
    action  TEXT    NOT NULL,
    target  TEXT,
    -- a small JSON object
    detail  TEXT    NOT NULL
);

CREATE INDEX admin_events_at ON admin_events (at);
