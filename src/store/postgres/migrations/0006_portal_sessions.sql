-- fedgate cloud store, schema version 6 (PostgreSQL): portal (browser)
-- sessions, kept here so that every node honours them.

CREATE TABLE portal_sessions (
    -- SHA-256 of the cookie value: the store never holds a usable session id
    id_hash       BYTEA   PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    user_id       BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'password': the password was right, a second factor is due;
    -- 'signed_in': the sign-in is complete
    stage         TEXT    NOT NULL CHECK (stage IN ('password', 'signed_in')),
    -- whether a TOTP code was checked (browser = "mfa" routes need it)
    mfa           BOOLEAN NOT NULL DEFAULT FALSE,
    -- the user's MFA state when the session began: a change ends it
    mfa_state     TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    -- where to go after sign-in (a path of a configured route)
    return_to     TEXT,
    -- a TOTP secret being registered, sealed under the portal key
    pending_totp  BYTEA,
    failed_codes  BIGINT  NOT NULL DEFAULT 0,
    codes_blocked_until BIGINT
);

CREATE INDEX portal_sessions_user ON portal_sessions (user_id);
CREATE INDEX portal_sessions_last_seen ON portal_sessions (last_seen_at);
