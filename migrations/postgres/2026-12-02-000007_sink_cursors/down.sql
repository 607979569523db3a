DROP TABLE sink_cursors;
