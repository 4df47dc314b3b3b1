-- The working directory of a native command task (empty: the node's first safe path) (postgres dialect; keep in step with the other).
ALTER TABLE tasks ADD COLUMN workdir TEXT NOT NULL DEFAULT '';
