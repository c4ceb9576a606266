-- What each commit changed, for the query service's response cache: see the PostgreSQL
-- migration of the same name.
ALTER TABLE session_events_head ADD COLUMN changes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE session_changes (
    seq        INTEGER PRIMARY KEY,
    everything INTEGER NOT NULL,
    sessions   BLOB    NOT NULL,
    owners     TEXT    NOT NULL
);

-- Binaries of level 2 commit without noting their changes: a response cache would keep
-- answers those commits made stale.
UPDATE schema_compatibility SET level = 3;
