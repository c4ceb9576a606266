-- What each commit changed, for the query services' response caches (every replica follows it,
-- as it follows the session event log): one row a commit that changed a session, numbered in
-- commit order by the head row's `changes` counter (its row lock orders the commits of several
-- instances, so numbers are dense). `sessions`: the changed session ids, 16 bytes each;
-- `owners`: a JSON array of the distinct [access_key, domain_name, group_id] of those sessions
-- (what a list's filter and scope compare); `everything`: the whole read model may have changed
-- (a replay's swap or reset). The projector keeps the newest
-- sessionview_store::live::CHANGES_WINDOW rows. Not part of the read model a replay swaps.
ALTER TABLE session_events_head ADD COLUMN changes bigint NOT NULL DEFAULT 0;
CREATE TABLE session_changes (
    seq        bigint  PRIMARY KEY,
    everything boolean NOT NULL,
    sessions   bytea   NOT NULL,
    owners     text    NOT NULL
);

-- Binaries of level 2 commit without noting their changes: a response cache would keep
-- answers those commits made stale.
UPDATE schema_compatibility SET level = 3;
