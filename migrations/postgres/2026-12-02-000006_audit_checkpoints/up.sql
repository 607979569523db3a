-- Checkpoints made so far, one row per checkpointed chain length: the
-- replicas agree on one sequence here (the primary key refuses two for one
-- seq), and each writes the files of every row to its checkpoint_dir. The
-- files, not these rows, are the evidence: the signing key never enters
-- the database.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
