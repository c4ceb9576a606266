-- Idempotence per session: the ids of every event recorded for a session (applied, parked or
-- dead-lettered after decoding), 16 bytes each, in the order they were folded, in chunks of 120
-- ids (only the last is ever appended to). It replaces seen_events (one index entry per event);
-- a batch reads the chunks of each session it touches and appends to the last. See the
-- PostgreSQL migration of the same name.
CREATE TABLE session_seen (
    session_id TEXT    NOT NULL,
    chunk      INTEGER NOT NULL,
    ids        BLOB    NOT NULL
        CHECK (typeof(ids) = 'blob' AND length(ids) % 16 = 0 AND length(ids) <= 1920),
    PRIMARY KEY (session_id, chunk)
);

INSERT INTO session_seen (session_id, chunk, ids)
SELECT session_id, chunk, CAST(group_concat(id, '' ORDER BY n) AS BLOB)
FROM (
    SELECT session_id, unhex(replace(event_id, '-', '')) AS id,
        row_number() OVER (PARTITION BY session_id ORDER BY event_id) - 1 AS n,
        (row_number() OVER (PARTITION BY session_id ORDER BY event_id) - 1) / 120 AS chunk
    FROM seen_events
)
GROUP BY session_id, chunk;
DROP TABLE seen_events;

-- Binaries of level 1 record event ids in seen_events, which is gone.
UPDATE schema_compatibility SET level = 2;
