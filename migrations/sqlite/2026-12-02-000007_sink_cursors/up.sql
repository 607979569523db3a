-- Where each `[[audit.sinks]]` entry stands: the last event `seq` it has
-- received (it moves only forward), the last `seq` of the batch in flight
-- (so a resend after a failure or a crash carries the same events under the
-- same batch id), and its backoff (failed attempts in a row, and when the
-- next attempt may start), kept here so replicas and restarts share them.
CREATE TABLE sink_cursors (
    sink TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    batch_end BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at BIGINT NOT NULL DEFAULT 0
);
