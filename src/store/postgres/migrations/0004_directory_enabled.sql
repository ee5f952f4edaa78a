-- fedgate cloud store, schema version 4 (PostgreSQL): the directory's
-- account state apart from `enabled` (the operator's), so that a sync
-- re-enabling an account does not undo `fedgate user disable`.

ALTER TABLE users ADD COLUMN directory_enabled BOOLEAN NOT NULL DEFAULT TRUE;
