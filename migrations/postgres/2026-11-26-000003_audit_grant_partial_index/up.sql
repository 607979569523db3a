-- Most audit events name no grant (deliveries, snapshots, decisions); they
-- need no entry in the by-grant index, which every append used to pay for.
-- A look-up by `grant_id = ?` implies `grant_id IS NOT NULL`, so it still
-- uses this index.
DROP INDEX audit_events_grant;
CREATE INDEX audit_events_grant ON audit_events (grant_id, seq) WHERE grant_id IS NOT NULL;
