-- What GET /events/session delivers: every event the projector applied (and the derived
-- session_started / session_terminated / session_cancelled), written by the commit that applied
-- it, numbered in commit order. `seq` is the stream's resume token (`Last-Event-ID`). The commit
-- takes its numbers from the one row of `session_events_head`, whose row lock orders concurrent
-- commits of several projector instances, and `pg_notify`s the query replicas in the same
-- transaction. The projector keeps the newest sessionview_store::SESSION_EVENT_WINDOW events.
-- Not part of the read model a replay swaps or resets: a listener's position survives a replay.
CREATE TABLE session_events (
    seq          bigint PRIMARY KEY,
    event        text   NOT NULL,
    session_id   uuid   NOT NULL,
    kernel_id    uuid,
    cluster_role text,
    reason       text,
    session_name text   NOT NULL,
    access_key   text   NOT NULL,
    domain_name  text   NOT NULL,
    group_name   text   NOT NULL
);
CREATE TABLE session_events_head (
    id  integer PRIMARY KEY CHECK (id = 1),
    seq bigint  NOT NULL
);
INSERT INTO session_events_head (id, seq) VALUES (1, 0);
