-- One PostgreSQL schema per processor: each processor owns its tables and
-- nobody else's (DESIGN.md, "state in PostgreSQL"). Later migrations add the
-- tables; least-privilege roles per schema come with the hardening work.
CREATE SCHEMA IF NOT EXISTS intake;
CREATE SCHEMA IF NOT EXISTS scraper;
CREATE SCHEMA IF NOT EXISTS geocoder;
CREATE SCHEMA IF NOT EXISTS matcher;
CREATE SCHEMA IF NOT EXISTS email_batcher;
CREATE SCHEMA IF NOT EXISTS scheduler;
CREATE SCHEMA IF NOT EXISTS registry;
