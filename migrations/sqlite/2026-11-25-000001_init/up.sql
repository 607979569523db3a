-- Times are microseconds since the Unix epoch, UTC, so both backends
-- compare and index them the same way.

CREATE TABLE deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    body_sha256 TEXT NOT NULL,
    ticket TEXT,
    outcome TEXT NOT NULL,
    PRIMARY KEY (source, delivery_id)
);

CREATE TABLE tickets (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    source_updated_at BIGINT NOT NULL,
    snapshot TEXT NOT NULL,
    decision TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket TEXT NOT NULL,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX decisions_ticket ON decisions (ticket, id);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    ticket TEXT NOT NULL,
    subject TEXT NOT NULL,
    account TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    activated_at BIGINT,
    revoked_at BIGINT,
    revoke_reason TEXT,
    failure TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (ticket, origin, subject, resource)
);
CREATE INDEX grants_live_expiry ON grants (state, expires_at);
CREATE INDEX grants_resource ON grants (resource, activated_at);
CREATE INDEX grants_subject ON grants (subject);
CREATE INDEX grants_ticket ON grants (ticket);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    run_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    locked_by TEXT,
    locked_until BIGINT,
    version BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (run_at);

CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    type TEXT NOT NULL,
    ticket TEXT,
    grant_id TEXT,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_ticket ON audit_events (ticket, seq);
CREATE INDEX audit_events_grant ON audit_events (grant_id, seq);
CREATE INDEX audit_events_at ON audit_events (at, seq);

-- The chain's head: one row, locked by every appending transaction so the
-- chain stays linear across replicas.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_pem TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
