-- fedgate cloud store, schema version 11 (PostgreSQL): every change of a user's MFA
-- state or existence, with its time, written in the same transaction as the
-- change. The usage report counts users in state enabled or enforced per
-- day from it; enrolment notices are sent for its rows.
--
-- History before this migration is not known: each user existing now gets
-- one row with the state they hold at migration time, marked `backfilled`,
-- and the report treats days before the earliest backfilled row as
-- unknown. ({{migrated_at}} is the migration time, from the store's clock.)

CREATE TABLE mfa_state_history (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- no foreign key, like the audit log: history outlives what it names
    user_id    BIGINT  NOT NULL,
    at         BIGINT  NOT NULL,
    -- the state held from `at` on
    mfa_state  TEXT    NOT NULL CHECK (mfa_state IN ('disabled', 'enabled', 'enforced')),
    -- whether the user is deleted from `at` on
    deleted    BOOLEAN NOT NULL,
    backfilled BOOLEAN NOT NULL DEFAULT FALSE
);

-- The report reads a user's rows in time order, and the rows of a range.
CREATE INDEX mfa_state_history_user_at ON mfa_state_history (user_id, at, id);
CREATE INDEX mfa_state_history_at ON mfa_state_history (at);

INSERT INTO mfa_state_history (user_id, at, mfa_state, deleted, backfilled)
SELECT id, {{migrated_at}}, mfa_state, deleted, TRUE FROM users ORDER BY id;
