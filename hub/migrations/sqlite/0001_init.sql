-- Outpost hub schema, SQLite dialect. Keep in step with migrations/postgres.
CREATE TABLE nodes (
    id                    TEXT PRIMARY KEY NOT NULL,
    name                  TEXT NOT NULL,
    grpc_target           TEXT NOT NULL DEFAULT '',
    tls_server_name       TEXT NOT NULL DEFAULT '',
    default_worktree_root TEXT NOT NULL DEFAULT '',
    public_key_sha256     TEXT,
    joined_at_ms          INTEGER,
    draining              INTEGER NOT NULL DEFAULT 0,
    status                TEXT NOT NULL DEFAULT 'offline',
    status_reason         TEXT NOT NULL DEFAULT '',
    last_heartbeat_ms     INTEGER,
    capabilities          BLOB,
    created_at_ms         INTEGER NOT NULL,
    updated_at_ms         INTEGER NOT NULL
);

CREATE TABLE bootstrap_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    proof_key     BLOB NOT NULL,
    uses_left     INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE join_challenges (
    id            TEXT PRIMARY KEY NOT NULL,
    node_id       TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY NOT NULL,
    node_id       TEXT NOT NULL REFERENCES nodes (id),
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX agents_by_node ON agents (node_id, status);
