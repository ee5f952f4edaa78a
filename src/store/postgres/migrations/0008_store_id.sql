-- fedgate cloud store, schema version 8 (PostgreSQL): the store's
-- identity, a random id written once when the store is created, that a
-- running server compares with the one it opened: a database swapped for
-- another store, or recreated empty, is noticed rather than served from.

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));
