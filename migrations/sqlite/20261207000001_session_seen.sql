-- Idempotence per session: the ids of every event recorded for a session (applied, parked or
-- dead-lettered after decoding), 16 bytes each, in the order they were folded. It replaces
-- seen_events (one index entry per event); a batch reads and appends the record of each session
-- it touches. See the PostgreSQL migration of the same name.
CREATE TABLE session_seen (
    session_id TEXT PRIMARY KEY,
    ids        BLOB NOT NULL CHECK (typeof(ids) = 'blob' AND length(ids) % 16 = 0)
);

INSERT INTO session_seen (session_id, ids)
SELECT session_id, CAST(group_concat(unhex(replace(event_id, '-', '')), '' ORDER BY event_id) AS BLOB)
FROM seen_events
GROUP BY session_id;
DROP TABLE seen_events;

-- Binaries of level 1 record event ids in seen_events, which is gone.
UPDATE schema_compatibility SET level = 2;
