-- The read model on SQLite (the embedded default). Same tables and meaning as the PostgreSQL
-- schema; UUIDs are lower-case text, timestamps fixed-width UTC text ("2020-02-16T15:47:28.997335Z",
-- so text order is time order), JSON values text.

CREATE TABLE sessions (
    id                  TEXT    PRIMARY KEY,
    name                TEXT    NOT NULL,
    type                TEXT    NOT NULL,
    tag                 TEXT,
    image               TEXT    NOT NULL,
    registry            TEXT    NOT NULL,
    cluster_template    TEXT,
    domain_name         TEXT    NOT NULL,
    group_name          TEXT    NOT NULL,
    group_id            TEXT    NOT NULL,
    user_email          TEXT    NOT NULL,
    user_id             TEXT    NOT NULL,
    access_key          TEXT    NOT NULL,
    created_user_email  TEXT,
    created_user_id     TEXT,
    status              TEXT    NOT NULL,
    status_changed      TEXT    NOT NULL,
    status_info         TEXT,
    created_at          TEXT    NOT NULL,
    terminated_at       TEXT,
    startup_command     TEXT,
    result              TEXT    NOT NULL,
    resource_opts       TEXT    NOT NULL,
    scaling_group       TEXT,
    service_ports       TEXT,
    mounts              TEXT    NOT NULL,
    occupied_slots      TEXT    NOT NULL,
    num_queries         INTEGER NOT NULL,
    last_touched        TEXT GENERATED ALWAYS AS (max(created_at, status_changed, coalesce(terminated_at, created_at))) STORED
);
CREATE INDEX sessions_last_touched ON sessions (last_touched DESC, id DESC);
CREATE INDEX sessions_access_key ON sessions (access_key, last_touched DESC, id DESC);
CREATE INDEX sessions_domain ON sessions (domain_name, last_touched DESC, id DESC);
CREATE INDEX sessions_group ON sessions (group_id);
CREATE INDEX sessions_status ON sessions (status);

CREATE TABLE kernels (
    id              TEXT    PRIMARY KEY,
    session_id      TEXT    NOT NULL,
    ordinal         INTEGER NOT NULL,
    role            TEXT    NOT NULL,
    hostname        TEXT,
    image           TEXT    NOT NULL,
    registry        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    status_changed  TEXT    NOT NULL,
    status_info     TEXT,
    created_at      TEXT    NOT NULL,
    terminated_at   TEXT,
    agent           TEXT,
    container_id    TEXT,
    resource_opts   TEXT    NOT NULL,
    occupied_slots  TEXT    NOT NULL,
    service_ports   TEXT,
    last_stat       TEXT,
    last_touched    TEXT GENERATED ALWAYS AS (max(created_at, status_changed, coalesce(terminated_at, created_at))) STORED,
    UNIQUE (session_id, ordinal)
);
CREATE INDEX kernels_session_touched ON kernels (session_id, last_touched DESC, id DESC);

CREATE TABLE session_dependencies (
    session_id  TEXT    NOT NULL,
    ordinal     INTEGER NOT NULL,
    depends_on  TEXT    NOT NULL,
    PRIMARY KEY (session_id, ordinal)
);
CREATE INDEX session_dependencies_depends_on ON session_dependencies (depends_on);

CREATE TABLE seen_events (
    event_id    TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE parked_events (
    source      TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    session_id  TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    parked_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (source, partition, "offset")
);
CREATE INDEX parked_events_session ON parked_events (session_id);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    event_id    TEXT,
    event_type  TEXT,
    session_id  TEXT,
    label       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    recorded_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (source, partition, "offset")
);

CREATE TABLE source_positions (
    source      TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (source, partition)
);

CREATE TABLE keypairs (
    access_key  TEXT    PRIMARY KEY,
    secret_key  TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    user_email  TEXT    NOT NULL,
    domain_name TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('superadmin', 'admin', 'user')),
    is_active   INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT    NOT NULL
);
