DROP INDEX jobs_leased;
