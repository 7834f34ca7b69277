-- demo_fdw--1.0.sql (v1 build)
CREATE FUNCTION demo_fdw_handler() RETURNS fdw_handler
  AS 'MODULE_PATHNAME' LANGUAGE C STRICT;
