-- The session event log in pages: each commit writes its events as pages of up to
-- sessionview_store::live::PAGE_EVENTS (1,000) events, numbered first_seq..=last_seq, each page
-- one JSON array of events (each an array: name, session_id, kernel_id, cluster_role, reason,
-- session_name, access_key, domain_name, group_name). It replaces session_events, a row and an
-- index entry per event, inserted and later deleted again, which were about 40 % of the
-- projector's write-ahead log. Numbers stay dense (the head row allots them), so a reader finds
-- the events after any seq in the pages whose range holds them.
CREATE TABLE session_event_pages (
    first_seq bigint PRIMARY KEY,
    last_seq  bigint NOT NULL CHECK (last_seq >= first_seq),
    events    text   NOT NULL
);
-- A page repeats its sessions' names and owners: compressed with lz4 where the server has it
-- (a fifth of the bytes for little CPU; pglz, the fallback, costs more CPU than it saves, so
-- without lz4 pages are kept out of line uncompressed).
DO $$
BEGIN
    ALTER TABLE session_event_pages ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    ALTER TABLE session_event_pages ALTER COLUMN events SET STORAGE EXTERNAL;
END $$;

-- The events already logged, a page each, so listeners resume where they were.
INSERT INTO session_event_pages (first_seq, last_seq, events)
SELECT seq, seq, json_build_array(json_build_array(event, session_id, kernel_id, cluster_role,
    reason, session_name, access_key, domain_name, group_name))::text
FROM session_events;
DROP TABLE session_events;

-- Binaries of level 1 log events in session_events, which is gone.
UPDATE schema_compatibility SET level = 2;
