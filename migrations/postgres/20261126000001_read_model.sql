-- The read model: one row per compute session and per container (kernel), written only by the
-- projector, read by the query service. Every column a GraphQL field reads is here, denormalized.

CREATE TABLE sessions (
    id                  uuid        PRIMARY KEY,
    name                text        NOT NULL,
    type                text        NOT NULL,
    tag                 text,
    image               text        NOT NULL,
    registry            text        NOT NULL,
    cluster_template    text,
    domain_name         text        NOT NULL,
    group_name          text        NOT NULL,
    group_id            uuid        NOT NULL,
    user_email          text        NOT NULL,
    user_id             uuid        NOT NULL,
    access_key          text        NOT NULL,
    created_user_email  text,
    created_user_id     uuid,
    status              text        NOT NULL,
    status_changed      timestamptz NOT NULL,
    status_info         text,
    created_at          timestamptz NOT NULL,
    terminated_at       timestamptz,
    startup_command     text,
    result              text        NOT NULL,
    resource_opts       jsonb       NOT NULL,
    scaling_group       text,
    service_ports       jsonb,
    mounts              jsonb       NOT NULL,
    occupied_slots      jsonb       NOT NULL,
    num_queries         bigint      NOT NULL,
    -- The default list order: most recently touched first (GREATEST ignores NULLs).
    last_touched        timestamptz GENERATED ALWAYS AS (GREATEST(created_at, status_changed, terminated_at)) STORED
);
CREATE INDEX sessions_last_touched ON sessions (last_touched DESC, id DESC);
CREATE INDEX sessions_access_key ON sessions (access_key, last_touched DESC, id DESC);
CREATE INDEX sessions_domain ON sessions (domain_name, last_touched DESC, id DESC);
CREATE INDEX sessions_group ON sessions (group_id);
CREATE INDEX sessions_status ON sessions (status);

CREATE TABLE kernels (
    id              uuid        PRIMARY KEY,
    session_id      uuid        NOT NULL,
    ordinal         integer     NOT NULL,
    role            text        NOT NULL,
    hostname        text,
    image           text        NOT NULL,
    registry        text        NOT NULL,
    status          text        NOT NULL,
    status_changed  timestamptz NOT NULL,
    status_info     text,
    created_at      timestamptz NOT NULL,
    terminated_at   timestamptz,
    agent           text,
    container_id    text,
    resource_opts   jsonb       NOT NULL,
    occupied_slots  jsonb       NOT NULL,
    service_ports   jsonb,
    last_stat       jsonb,
    last_touched    timestamptz GENERATED ALWAYS AS (GREATEST(created_at, status_changed, terminated_at)) STORED,
    UNIQUE (session_id, ordinal)
);

-- Written once, when the session is enqueued; the sessions depended on may not exist (yet).
CREATE TABLE session_dependencies (
    session_id  uuid    NOT NULL,
    ordinal     integer NOT NULL,
    depends_on  uuid    NOT NULL,
    PRIMARY KEY (session_id, ordinal)
);
CREATE INDEX session_dependencies_depends_on ON session_dependencies (depends_on);

-- Idempotence: every event id applied, parked or dead-lettered after decoding.
CREATE TABLE seen_events (
    event_id    uuid PRIMARY KEY,
    session_id  uuid NOT NULL
);

-- Events that arrived before their session's session_enqueued.
CREATE TABLE parked_events (
    source      text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    session_id  uuid        NOT NULL,
    event_id    uuid        NOT NULL,
    payload     bytea       NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, partition, "offset")
);
CREATE INDEX parked_events_session ON parked_events (session_id);

CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    source      text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    event_id    uuid,
    event_type  text,
    session_id  uuid,
    label       text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, partition, "offset")
);

-- Where each source partition resumes: written in the same transaction as the rows, advanced by
-- compare-and-set.
CREATE TABLE source_positions (
    source      text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, partition)
);
