-- The audit log: every write through REST, gRPC or the console, who made it and how it ended (sqlite dialect; keep in step with the other).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    surface TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
