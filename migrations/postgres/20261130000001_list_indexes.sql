-- Indexes for the dashboard's questions "sessions of this access key in this status" and "sessions
-- in this status", newest first: the page is the first entries of the index, and the count scans
-- only the matching entries (before: a bitmap AND of the access-key and status indexes, then a sort).
CREATE INDEX sessions_access_key_status ON sessions (access_key, status, last_touched DESC, id DESC);
CREATE INDEX sessions_status_touched ON sessions (status, last_touched DESC, id DESC);
DROP INDEX sessions_status;
