-- Labels an operator assigns to a node (JSON object); placement trusts them over the node's own (postgres dialect; keep in step with the other).
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
