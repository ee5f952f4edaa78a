-- fedgate cloud store, schema version 10: what each node's lockout
-- counted, so that the other nodes of one store count it too (a guesser
-- spreading attempts over the nodes behind a load balancer gains nothing).
-- Only what counting needs: never a secret, nor a hash of one. Rows older
-- than the longest lockout window are pruned.

CREATE TABLE lockout_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    -- the node that counted it (its own rows are skipped when read back)
    node      TEXT    NOT NULL,
    -- 'failed': a refused secret counted; 'signed_in': a source became
    -- familiar to the user
    kind      TEXT    NOT NULL CHECK (kind IN ('failed', 'signed_in')),
    -- the user the name resolved to, or the name's canonical login part
    user_id   INTEGER,
    name      TEXT,
    client_ip TEXT    NOT NULL,
    reason    TEXT
);

CREATE INDEX lockout_events_at ON lockout_events (at);
