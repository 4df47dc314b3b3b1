-- Agents: what to run (spec, JSON), which run is current, and how the last one ended (postgres dialect; keep in step with the other).
ALTER TABLE agents ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN run BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN exit_code BIGINT;
ALTER TABLE agents ADD COLUMN signal BIGINT;
ALTER TABLE agents ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN landlock TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN updated_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN started_at_ms BIGINT;
ALTER TABLE agents ADD COLUMN finished_at_ms BIGINT;
