-- fedgate cloud store, schema version 8: the store's identity. A random id
-- written once, when the store is created (or first migrated to this
-- version), that a running server compares with the one it opened: a file
-- swapped for another store, or recreated empty, is noticed rather than
-- served from.

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
