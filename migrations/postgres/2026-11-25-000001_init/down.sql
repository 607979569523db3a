DROP TABLE signing_keys;
DROP TABLE audit_head;
DROP TABLE audit_events;
DROP TABLE jobs;
DROP TABLE grants;
DROP TABLE decisions;
DROP TABLE tickets;
DROP TABLE deliveries;
