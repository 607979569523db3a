ALTER TABLE grant_access DROP COLUMN told_until;
