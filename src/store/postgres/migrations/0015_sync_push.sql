-- fedgate cloud store, schema version 15 (PostgreSQL): directory changes
-- pushed by the directory (see the SQLite migration of the same version).

ALTER TABLE sync_state ADD COLUMN push_cookie TEXT;
ALTER TABLE sync_state ADD COLUMN push_cookie_server TEXT;
ALTER TABLE sync_state ADD COLUMN push_node TEXT;
ALTER TABLE sync_state ADD COLUMN push_method TEXT;
ALTER TABLE sync_state ADD COLUMN push_server TEXT;
ALTER TABLE sync_state ADD COLUMN push_connected BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE sync_state ADD COLUMN push_since BIGINT;
ALTER TABLE sync_state ADD COLUMN push_last_change_at BIGINT;
ALTER TABLE sync_state ADD COLUMN push_updated_at BIGINT;
ALTER TABLE sync_state ADD COLUMN push_error TEXT;
