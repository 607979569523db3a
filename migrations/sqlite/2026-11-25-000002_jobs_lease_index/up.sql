-- The runner asks for the earliest lease expiry on every idle pass.
CREATE INDEX jobs_leased ON jobs (locked_until) WHERE locked_until IS NOT NULL;
