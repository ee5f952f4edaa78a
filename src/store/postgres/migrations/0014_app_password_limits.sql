-- fedgate cloud store, schema version 14 (PostgreSQL): app-password limits
-- (see the SQLite migration of the same version).

ALTER TABLE app_passwords ADD COLUMN scope TEXT;
ALTER TABLE app_passwords ADD COLUMN expires_at BIGINT;
ALTER TABLE app_passwords ADD COLUMN networks TEXT;
