DROP INDEX grants_access;
DROP TABLE grant_access;
