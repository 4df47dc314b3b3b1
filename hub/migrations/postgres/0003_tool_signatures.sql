-- Who signed a tool's component and policy (outpost_trust::signing); empty when unsigned (postgres dialect; keep in step with the other).
ALTER TABLE tools ADD COLUMN publisher TEXT NOT NULL DEFAULT '';
ALTER TABLE tools ADD COLUMN signature TEXT NOT NULL DEFAULT '';
