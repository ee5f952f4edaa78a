-- fedgate cloud store, schema version 2 (PostgreSQL): what the directory
-- says about a federated user, so that a sign-in by login name
-- (CORP\alice, alice) finds the user without asking the directory, and a
-- rename or move in the directory (same anchor) stays the same user.

-- the entry's distinguished name, as last seen
ALTER TABLE users ADD COLUMN dn TEXT;
-- login name (sAMAccountName / uid), as the directory spells it
ALTER TABLE users ADD COLUMN login TEXT;
-- immutable id of the entry (objectGUID as a GUID string / entryUUID)
ALTER TABLE users ADD COLUMN anchor TEXT;
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN mail TEXT;
-- when the directory last confirmed the entry (unix ms)
ALTER TABLE users ADD COLUMN directory_seen_at BIGINT;

CREATE UNIQUE INDEX users_anchor ON users (anchor) WHERE anchor IS NOT NULL;
CREATE INDEX users_login ON users (lower(login COLLATE "C")) WHERE login IS NOT NULL;
