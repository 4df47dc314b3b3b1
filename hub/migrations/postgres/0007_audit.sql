-- The audit log: every write through REST, gRPC or the console, who made it and how it ended (postgres dialect; keep in step with the other).
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    surface TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
