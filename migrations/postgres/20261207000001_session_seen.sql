-- Idempotence per session: the ids of every event recorded for a session (applied, parked or
-- dead-lettered after decoding), 16 bytes each, in the order they were folded. It replaces
-- seen_events, one B-tree entry per event (about 100 bytes with its heap row) at a random place
-- of an index that grew with the stream, which every event paid for with an index lookup at load
-- and an insert at commit. A batch reads and appends the record of each session it touches: one
-- lookup per session, found with the session's own rows.
--
-- The projector appends to a record only if it still has the length the batch loaded (see
-- sessionview_projection::SeenIds), so concurrent instances never record one event twice.
CREATE TABLE session_seen (
    session_id uuid  PRIMARY KEY,
    ids        bytea NOT NULL CHECK (octet_length(ids) % 16 = 0)
);
-- Random ids do not compress: kept as they are (out of line once a record outgrows ~2 KB).
ALTER TABLE session_seen ALTER COLUMN ids SET STORAGE EXTERNAL;

INSERT INTO session_seen (session_id, ids)
SELECT session_id, string_agg(uuid_send(event_id), ''::bytea ORDER BY event_id)
FROM seen_events
GROUP BY session_id;
DROP TABLE seen_events;

-- Binaries of level 1 record event ids in seen_events, which is gone.
UPDATE schema_compatibility SET level = 2;
