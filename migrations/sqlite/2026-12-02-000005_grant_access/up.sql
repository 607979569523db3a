-- The access ledger: for each grant that reached its provider's access,
-- whether its own call applied it (`held`) or it rode on another live
-- grant's (`shared`), and whether the provider held it before warrant did.
CREATE TABLE grant_access (
    grant_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    preexisting INTEGER NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
-- The live grants holding one access (provider/target and account).
CREATE INDEX grants_access ON grants (resource, account)
    WHERE state IN ('pending', 'granting', 'active', 'revoking');
