-- What GET /events/session delivers: every event the projector applied (and the derived
-- session_started / session_terminated / session_cancelled), written by the commit that applied
-- it, numbered in commit order (SQLite has one writer at a time). `seq` is the stream's resume
-- token (`Last-Event-ID`); the commit takes its numbers from the one row of `session_events_head`.
-- Query services in the projector's process are woken in-process; others poll. The projector
-- keeps the newest sessionview_store::SESSION_EVENT_WINDOW events. Not part of the read model a
-- replay swaps or resets: a listener's position survives a replay.
CREATE TABLE session_events (
    seq          INTEGER PRIMARY KEY,
    event        TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    kernel_id    TEXT,
    cluster_role TEXT,
    reason       TEXT,
    session_name TEXT    NOT NULL,
    access_key   TEXT    NOT NULL,
    domain_name  TEXT    NOT NULL,
    group_name   TEXT    NOT NULL
);
CREATE TABLE session_events_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO session_events_head (id, seq) VALUES (1, 0);
