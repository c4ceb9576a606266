-- The session event log in pages of up to 1,000 events, one JSON array each; see the PostgreSQL
-- migration of the same name.
CREATE TABLE session_event_pages (
    first_seq INTEGER PRIMARY KEY,
    last_seq  INTEGER NOT NULL CHECK (last_seq >= first_seq),
    events    TEXT    NOT NULL
);

INSERT INTO session_event_pages (first_seq, last_seq, events)
SELECT seq, seq, json_array(json_array(event, session_id, kernel_id, cluster_role, reason,
    session_name, access_key, domain_name, group_name))
FROM session_events;
DROP TABLE session_events;

-- Binaries of level 1 log events in session_events, which is gone.
UPDATE schema_compatibility SET level = 2;
