-- Idempotence per session: the ids of every event recorded for a session (applied, parked or
-- dead-lettered after decoding), 16 bytes each, in the order they were folded, in chunks of
-- sessionview_store::SEEN_CHUNK_IDS (120) ids: chunk k holds the session's ids k·120 to
-- k·120+119, so a chunk stays within a page and only the last one is ever appended to (a
-- session of a million events does not rewrite 16 MB per batch). It replaces seen_events, one
-- B-tree entry per event (about 100 bytes with its heap row) at a random place of an index that
-- grew with the stream, which every event paid for with an index lookup at load and an insert at
-- commit. A batch reads the chunks of each session it touches (one index range per session,
-- never a lookup per event) and appends to the last.
--
-- The projector appends to a chunk only if it still has the length the batch loaded, and creates
-- one only where none exists (see sessionview_projection::SeenIds), so concurrent instances
-- never record one event twice.
CREATE TABLE session_seen (
    session_id uuid    NOT NULL,
    chunk      integer NOT NULL,
    ids        bytea   NOT NULL CHECK (octet_length(ids) % 16 = 0 AND octet_length(ids) <= 1920),
    PRIMARY KEY (session_id, chunk)
);
-- Random ids do not compress: never try.
ALTER TABLE session_seen ALTER COLUMN ids SET STORAGE EXTERNAL;

INSERT INTO session_seen (session_id, chunk, ids)
SELECT session_id, chunk, string_agg(id, ''::bytea ORDER BY n)
FROM (
    SELECT session_id, uuid_send(event_id) AS id,
        row_number() OVER (PARTITION BY session_id ORDER BY event_id) - 1 AS n,
        ((row_number() OVER (PARTITION BY session_id ORDER BY event_id) - 1) / 120)::integer AS chunk
    FROM seen_events
) numbered
GROUP BY session_id, chunk;
DROP TABLE seen_events;

-- Binaries of level 1 record event ids in seen_events, which is gone.
UPDATE schema_compatibility SET level = 2;
