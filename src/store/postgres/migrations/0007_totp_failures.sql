-- fedgate cloud store, schema version 7 (PostgreSQL): wrong second-factor
-- codes are counted per user, not per browser session, so signing in again
-- does not buy a guesser more tries.

ALTER TABLE users ADD COLUMN totp_failures BIGINT NOT NULL DEFAULT 0 CHECK (totp_failures >= 0);
-- no code is checked for this user before this time (unix ms)
ALTER TABLE users ADD COLUMN totp_blocked_until BIGINT;
