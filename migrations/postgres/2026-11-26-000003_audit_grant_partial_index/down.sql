DROP INDEX audit_events_grant;
CREATE INDEX audit_events_grant ON audit_events (grant_id, seq);
