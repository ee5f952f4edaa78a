-- fedgate cloud store, schema version 7: wrong second-factor codes are
-- counted per user, not per browser session, so signing in again does not
-- buy a guesser more tries. (portal_sessions.failed_codes and
-- codes_blocked_until, which counted per session, are no longer used.)

ALTER TABLE users ADD COLUMN totp_failures INTEGER NOT NULL DEFAULT 0 CHECK (totp_failures >= 0);
-- no code is checked for this user before this time (unix ms)
ALTER TABLE users ADD COLUMN totp_blocked_until INTEGER;
