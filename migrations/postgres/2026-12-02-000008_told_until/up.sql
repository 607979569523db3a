-- The end the provider was last told for a grant whose access carries an
-- end (`http`, `token`): an extension that goes past it is told again.
ALTER TABLE grant_access ADD COLUMN told_until BIGINT;
