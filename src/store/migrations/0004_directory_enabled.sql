-- fedgate cloud store, schema version 4: the directory's account state
-- apart from `enabled` (the operator's), so that a sync re-enabling an
-- account does not undo `fedgate user disable`.
--
-- Federated users already disabled stay disabled through `enabled` (which
-- of the two disabled them is not recorded): an operator enables them
-- again with `fedgate user enable`, the fail-safe reading.

ALTER TABLE users ADD COLUMN directory_enabled INTEGER NOT NULL DEFAULT 1
    CHECK (directory_enabled IN (0, 1));
