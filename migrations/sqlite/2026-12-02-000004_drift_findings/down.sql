DROP TABLE drift_checks;
DROP TABLE drift_findings;
