-- fedgate cloud store, schema version 5 (PostgreSQL): the TOTP second
-- factor. Pending registrations live in the portal session until a code
-- from them was checked (see the SQLite migration of the same version).

-- the user's TOTP secret, sealed (AEAD) under the portal key with the user
-- id as associated data; NULL when the user has no TOTP registered
ALTER TABLE users ADD COLUMN totp_secret BYTEA;
-- the newest time step (unix seconds / 30) a code was accepted for: codes
-- of that step or an older one are refused, on every node (no replay)
ALTER TABLE users ADD COLUMN totp_last_step BIGINT CHECK (totp_last_step >= 0);
