-- The actor layer: durable mailboxes, permission reviews and the grants their persistent options
-- leave, and time triggers (postgres dialect; keep in step with the other).
CREATE TABLE actor_messages (
    id BIGSERIAL PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    team TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    deliveries BIGINT NOT NULL DEFAULT 0,
    max_deliveries BIGINT NOT NULL,
    visibility_ms BIGINT NOT NULL,
    visible_at_ms BIGINT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    acked_at_ms BIGINT
);
CREATE UNIQUE INDEX actor_messages_idempotency ON actor_messages (sender, recipient, idempotency_key);
CREATE INDEX actor_messages_inbox ON actor_messages (recipient, state, id);
CREATE INDEX actor_messages_dead ON actor_messages (state, id);

CREATE TABLE permission_reviews (
    id TEXT PRIMARY KEY,
    actor_id TEXT NOT NULL,
    title TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    request_key TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    option_id TEXT NOT NULL DEFAULT '',
    answered_by TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    answered_at_ms BIGINT
);
CREATE INDEX permission_reviews_state ON permission_reviews (state, created_at_ms);

CREATE TABLE permission_grants (
    actor_id TEXT NOT NULL,
    request_key TEXT NOT NULL,
    option_id TEXT NOT NULL,
    review_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (actor_id, request_key)
);

CREATE TABLE time_triggers (
    id TEXT PRIMARY KEY,
    actor_id TEXT NOT NULL,
    schedule TEXT NOT NULL,
    payload TEXT NOT NULL,
    next_due_ms BIGINT NOT NULL,
    fired BIGINT NOT NULL DEFAULT 0,
    last_fired_ms BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX time_triggers_due ON time_triggers (next_due_ms);
CREATE INDEX time_triggers_actor ON time_triggers (actor_id);
