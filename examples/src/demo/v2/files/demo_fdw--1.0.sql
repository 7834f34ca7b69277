-- demo_fdw--1.0.sql (v2 build)
CREATE FUNCTION demo_fdw_handler() RETURNS fdw_handler
  AS 'MODULE_PATHNAME' LANGUAGE C STRICT;
CREATE FOREIGN DATA WRAPPER demo_fdw HANDLER demo_fdw_handler;
