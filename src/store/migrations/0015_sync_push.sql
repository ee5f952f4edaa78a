-- fedgate cloud store, schema version 15: directory changes pushed by the
-- directory (RFC 4533 content synchronisation, AD change notifications).

-- Where the persistent search resumes (an RFC 4533 cookie, base64), and
-- the server it is from.
ALTER TABLE sync_state ADD COLUMN push_cookie TEXT;
ALTER TABLE sync_state ADD COLUMN push_cookie_server TEXT;
-- The persistent search as the sync leader last reported it, for
-- `fedgate sync status` (unix ms).
ALTER TABLE sync_state ADD COLUMN push_node TEXT;
ALTER TABLE sync_state ADD COLUMN push_method TEXT;
ALTER TABLE sync_state ADD COLUMN push_server TEXT;
ALTER TABLE sync_state ADD COLUMN push_connected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN push_since INTEGER;
ALTER TABLE sync_state ADD COLUMN push_last_change_at INTEGER;
ALTER TABLE sync_state ADD COLUMN push_updated_at INTEGER;
ALTER TABLE sync_state ADD COLUMN push_error TEXT;
