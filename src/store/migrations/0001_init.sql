-- fedgate cloud store, schema version 1.
-- Times are unix milliseconds (INTEGER). Booleans are 0/1.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    -- canonical form: trimmed and lowercased by the application
    upn           TEXT    NOT NULL UNIQUE,
    source        TEXT    NOT NULL CHECK (source IN ('cloud', 'federated')),
    enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    mfa_state     TEXT    NOT NULL DEFAULT 'disabled'
                          CHECK (mfa_state IN ('disabled', 'enabled', 'enforced')),
    registered_at INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    -- argon2id PHC string, cloud-only users only
    password_hash TEXT
);

CREATE INDEX users_mfa_state ON users (mfa_state, upn);

CREATE TABLE app_passwords (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    -- HMAC-SHA256 of the app password under the server key
    tag             BLOB    NOT NULL UNIQUE CHECK (length(tag) = 32),
    -- argon2id PHC string
    hash            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    last_ip         TEXT,
    last_user_agent TEXT
);

-- Names are unique per user, ignoring ASCII case: "iPhone" and "iphone"
-- would be the same device to the person deleting one.
CREATE UNIQUE INDEX app_passwords_user_name ON app_passwords (user_id, name COLLATE NOCASE);

CREATE TABLE settings (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    allow_app_passwords INTEGER NOT NULL DEFAULT 0 CHECK (allow_app_passwords IN (0, 1))
);

INSERT INTO settings (id) VALUES (1);

-- Change feed: one row per change that can grant or revoke, written in the
-- same transaction as the change. Running servers poll it to drop caches.
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    user_id INTEGER
);

CREATE TABLE audit (
    id                INTEGER PRIMARY KEY,
    at                INTEGER NOT NULL,
    upn_given         TEXT    NOT NULL,
    -- no foreign key: audit outlives whatever it mentions
    user_id           INTEGER,
    route             TEXT    NOT NULL,
    credential        TEXT    NOT NULL,
    app_password_name TEXT,
    client_ip         TEXT    NOT NULL,
    user_agent        TEXT    NOT NULL,
    success           INTEGER NOT NULL CHECK (success IN (0, 1)),
    reason            TEXT    NOT NULL,
    -- identical decisions within one flush window are one row
    count             INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1)
);

CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_user_at ON audit (user_id, at);
CREATE INDEX audit_upn_given_at ON audit (upn_given COLLATE NOCASE, at);
