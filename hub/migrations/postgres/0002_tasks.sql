-- Tools pushed to the hub and tasks placed on nodes (postgres dialect; keep in step with the other).
CREATE TABLE tools (
    name          TEXT PRIMARY KEY NOT NULL,
    digest        TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    component     BYTEA NOT NULL,
    policy_toml   TEXT NOT NULL DEFAULT '',
    version       TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    input_schema  TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE tasks (
    id              TEXT PRIMARY KEY NOT NULL,
    tool            TEXT NOT NULL DEFAULT '',
    command         TEXT NOT NULL DEFAULT '',
    input           TEXT NOT NULL DEFAULT '',
    requirements    TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    status          TEXT NOT NULL,
    node_id         TEXT NOT NULL DEFAULT '',
    reason          TEXT NOT NULL DEFAULT '',
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    timeout_ms      BIGINT NOT NULL DEFAULT 0,
    devices         TEXT NOT NULL DEFAULT '',
    output          TEXT,
    error_kind      TEXT NOT NULL DEFAULT '',
    error_message   TEXT NOT NULL DEFAULT '',
    duration_us     BIGINT NOT NULL DEFAULT 0,
    fuel_used       BIGINT NOT NULL DEFAULT 0,
    late_results    BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    started_at_ms   BIGINT,
    finished_at_ms  BIGINT
);

CREATE INDEX tasks_by_status ON tasks (status, created_at_ms);

CREATE TABLE task_attempts (
    task_id        TEXT NOT NULL REFERENCES tasks (id),
    attempt        BIGINT NOT NULL,
    node_id        TEXT NOT NULL,
    status         TEXT NOT NULL,
    output         TEXT,
    error_kind     TEXT NOT NULL DEFAULT '',
    error_message  TEXT NOT NULL DEFAULT '',
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    PRIMARY KEY (task_id, attempt)
);
