-- fedgate cloud store, schema version 9: which node leads the directory
-- sync. Several nodes on one store schedule passes only on the leader;
-- the lead is a lease the leader renews, and another node takes it once
-- it has run out (the leader died). Apart from the per-pass lease above,
-- which keeps any two passes (a CLI `sync run` included) from overlapping.

ALTER TABLE sync_state ADD COLUMN leader TEXT;
-- when this leader took the lead, and until when it holds it (unix ms)
ALTER TABLE sync_state ADD COLUMN leader_since INTEGER;
ALTER TABLE sync_state ADD COLUMN leader_until INTEGER;
