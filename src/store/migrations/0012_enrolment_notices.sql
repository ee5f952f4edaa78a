-- fedgate cloud store, schema version 12: enrolment notices, the mail a
-- user gets once an operator puts them in MFA state `enabled`. One row per
-- state change it is for (a row of mfa_state_history), so a user enabled
-- again after being disabled gets a new notice, and one change never gets
-- two.
--
-- status: 'sending' (claimed by a run, `claimed_until` says until when),
-- 'sent', 'failed' (retried by the next run), 'no_address' (the user has no
-- mail address; tried again by the next run).

CREATE TABLE enrolment_notices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL,
    history_id    INTEGER NOT NULL UNIQUE REFERENCES mfa_state_history (id),
    status        TEXT    NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'no_address')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    -- the address it went (or was to go) to
    address       TEXT,
    claimed_by    TEXT,
    claimed_until INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    sent_at       INTEGER
);

CREATE INDEX enrolment_notices_user ON enrolment_notices (user_id, history_id);
