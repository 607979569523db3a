-- Access a provider holds that no live grant warrants: one row per finding,
-- open while `resolved_at` is NULL. At most one open finding per access,
-- so a check that sees it again records nothing twice.
CREATE TABLE drift_findings (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    account TEXT NOT NULL,
    target TEXT NOT NULL,
    found_at BIGINT NOT NULL,
    resolved_at BIGINT,
    state TEXT NOT NULL
);
CREATE UNIQUE INDEX drift_findings_open ON drift_findings (provider, account, target)
    WHERE resolved_at IS NULL;

-- When the last drift check ran, so replicas share one schedule.
CREATE TABLE drift_checks (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL
);
INSERT INTO drift_checks (id, checked_at) VALUES (1, 0);
