-- fedgate cloud store, schema version 9 (PostgreSQL): which node leads the
-- directory sync (see the SQLite migration of the same version).

ALTER TABLE sync_state ADD COLUMN leader TEXT;
ALTER TABLE sync_state ADD COLUMN leader_since BIGINT;
ALTER TABLE sync_state ADD COLUMN leader_until BIGINT;
