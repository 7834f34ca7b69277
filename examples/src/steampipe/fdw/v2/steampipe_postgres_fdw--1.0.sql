-- steampipe_postgres_fdw--1.0.sql (v2)
CREATE FUNCTION fdw_handler() RETURNS fdw_handler;
