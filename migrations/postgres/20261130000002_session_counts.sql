-- Running session counts per combination of the list filters' columns, so that a list's
-- total_count sums a handful of rows instead of counting every matching session (a dashboard
-- polling "RUNNING sessions of this access key" counted thousands of index entries per request).
--
-- Written by the projector in the same transaction as the session rows (deltas, never absolute
-- values). `shard` is the smallest source partition of the writing batch: instances own disjoint
-- partitions, so concurrent instances never update the same row. A total is the sum over shards.
CREATE TABLE session_counts (
    access_key  text    NOT NULL,
    status      text    NOT NULL,
    domain_name text    NOT NULL,
    group_id    uuid    NOT NULL,
    shard       integer NOT NULL,
    n           bigint  NOT NULL,
    PRIMARY KEY (access_key, status, domain_name, group_id, shard)
);
CREATE INDEX session_counts_status ON session_counts (status);

-- Sessions already projected. Projectors of an earlier version must be stopped before this
-- migration (they would not keep the counts); `sessionview replay` rebuilds them in any case.
INSERT INTO session_counts (access_key, status, domain_name, group_id, shard, n)
SELECT access_key, status, domain_name, group_id, 0, count(*)
FROM sessions
GROUP BY access_key, status, domain_name, group_id;
