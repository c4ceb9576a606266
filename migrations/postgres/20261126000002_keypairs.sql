-- API keypairs of the query service (Backend.AI request signing), with the owner's scope and role.
CREATE TABLE keypairs (
    access_key  text        PRIMARY KEY,
    secret_key  text        NOT NULL,
    user_id     uuid        NOT NULL,
    user_email  text        NOT NULL,
    domain_name text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('superadmin', 'admin', 'user')),
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Container lists: default order (most recently touched first) within one session.
CREATE INDEX kernels_session_touched ON kernels (session_id, last_touched DESC, id DESC);
