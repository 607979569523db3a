-- The access ledger: for each grant that reached its provider's access,
-- whether its own call applied it (`held`) or it rode on another live
-- grant's (`shared`), and whether the provider held it before warrant did.
CREATE TABLE grant_access (
    grant_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    preexisting INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
-- The grants of one access (provider/target and account) by state. Not a
-- partial index: SQLite uses one only when the query repeats its WHERE,
-- and the ledger asks for one state at a time.
CREATE INDEX grants_access ON grants (resource, account, state);
