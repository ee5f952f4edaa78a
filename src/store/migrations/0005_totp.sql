-- fedgate cloud store, schema version 5: the TOTP second factor.
--
-- Pending registrations (a secret shown as a QR code, not yet confirmed
-- with a code) get no table: the portal keeps the pending secret in the
-- user's portal session, sealed under the portal key if the session
-- leaves the server, and writes it here only once a code from it has been
-- checked. An abandoned registration then leaves nothing behind, and a
-- user's registered factor is never replaced by one they have not proved.

-- the user's TOTP secret, sealed (AEAD) under the portal key with the user
-- id as associated data, so a secret copied to another row does not open;
-- NULL when the user has no TOTP registered
ALTER TABLE users ADD COLUMN totp_secret BLOB;
-- the newest time step (unix seconds / 30) a code was accepted for: codes
-- of that step or an older one are refused, on every node (no replay)
ALTER TABLE users ADD COLUMN totp_last_step INTEGER CHECK (totp_last_step >= 0);
