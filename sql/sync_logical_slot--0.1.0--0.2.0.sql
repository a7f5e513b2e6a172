-- sync_logical_slot 0.1.0 -> 0.2.0 (ALTER EXTENSION sync_logical_slot UPDATE)
--
-- Readiness per slot, with its verdict's source and age (issue 13): the
-- status view gains verdict_source and verified_at, sync_logical_slot_ready()
-- and sync_logical_slot_wait_ready() take an optional slot list, and
-- sync_logical_slot_readiness() is new; the view and the readiness functions
-- are granted to pg_monitor. sync_logical_slot_drop_copies() is new
-- (uninstalling, issue 16).
--
-- The view and the function under it change their columns, and the two
-- readiness functions their arguments, so they are made anew: a view of your
-- own over sync_logical_slot_status must be dropped before the update and
-- made again after it, and privileges you granted on these objects must be
-- granted again (CHANGELOG, "Upgrading").
\echo Use "ALTER EXTENSION sync_logical_slot UPDATE TO '0.2.0'" to load this file. \quit

DROP VIEW sync_logical_slot_status;
DROP FUNCTION sync_logical_slot_status_rows();
DROP FUNCTION sync_logical_slot_ready();
DROP FUNCTION sync_logical_slot_wait_ready(interval);

CREATE FUNCTION "sync_logical_slot_status_rows"() RETURNS TABLE (
	"slot_name" TEXT,
	"database" TEXT,
	"plugin" TEXT,
	"state" TEXT,
	"ready" bool,
	"remote_restart_lsn" TEXT,
	"remote_confirmed_flush_lsn" TEXT,
	"remote_catalog_xmin" TEXT,
	"local_restart_lsn" TEXT,
	"local_confirmed_flush_lsn" TEXT,
	"local_catalog_xmin" TEXT,
	"lag_bytes" bigint,
	"last_sync_at" timestamp with time zone,
	"last_error" TEXT,
	"verdict_source" TEXT,
	"verified_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'status_rows_0_2_wrapper';

CREATE FUNCTION "sync_logical_slot_ready"(
	"slots" TEXT[] DEFAULT NULL
) RETURNS bool
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ready_0_2_wrapper';

CREATE FUNCTION "sync_logical_slot_wait_ready"(
	"timeout" interval,
	"slots" TEXT[] DEFAULT NULL
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'wait_ready_0_2_wrapper';

CREATE FUNCTION "sync_logical_slot_readiness"(
	"slots" TEXT[] DEFAULT NULL
) RETURNS TABLE (
	"ready" bool,
	"verdict_source" TEXT,
	"verified_at" timestamp with time zone,
	"verdict_age" interval,
	"not_ready" TEXT[],
	"detail" TEXT
)
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'sync_logical_slot_readiness_wrapper';

CREATE FUNCTION "sync_logical_slot_drop_copies"() RETURNS INT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'sync_logical_slot_drop_copies_wrapper';

CREATE VIEW sync_logical_slot_status AS
SELECT slot_name::name AS slot_name,
       database::name AS database,
       plugin::name AS plugin,
       state,
       ready,
       remote_restart_lsn::pg_lsn AS remote_restart_lsn,
       remote_confirmed_flush_lsn::pg_lsn AS remote_confirmed_flush_lsn,
       remote_catalog_xmin::xid AS remote_catalog_xmin,
       local_restart_lsn::pg_lsn AS local_restart_lsn,
       local_confirmed_flush_lsn::pg_lsn AS local_confirmed_flush_lsn,
       local_catalog_xmin::xid AS local_catalog_xmin,
       lag_bytes,
       last_sync_at,
       last_error,
       verdict_source,
       verified_at
  FROM @extschema@.sync_logical_slot_status_rows();

REVOKE ALL ON FUNCTION sync_logical_slot_status_rows() FROM PUBLIC;
REVOKE ALL ON sync_logical_slot_status FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_drop_copies() FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_ready(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_readiness(text[]) FROM PUBLIC;
GRANT SELECT ON sync_logical_slot_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_status_rows() TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_ready(text[]) TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_readiness(text[]) TO pg_monitor;
COMMENT ON VIEW sync_logical_slot_status IS
  'One row per primary slot this standby copies or waits to copy, as of the worker''s last pass; empty on a primary. ready: the copy can be used after a failover.';
COMMENT ON FUNCTION sync_logical_slot_status_rows() IS
  'Rows of the sync_logical_slot_status view (use the view).';
COMMENT ON FUNCTION sync_logical_slot_drop_copies() IS
  'On a standby, when uninstalling: drops every copy sync_logical_slot made here and returns how many. Set sync_logical_slot.slot_names to an empty string and reload first, or the worker copies them again.';
COMMENT ON FUNCTION sync_logical_slot_ready(text[]) IS
  'On a standby: true when the slots named (NULL: every slot the filters select on the primary, less idle ones if sync_logical_slot.ready_ignores_idle_slots) have a ready copy here, as of the worker''s last pass, or, until a pass reaches the primary after a restart, as the copies'' records on disk say. A promotion gate; sync_logical_slot_readiness() tells how old the verdict is.';
COMMENT ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) IS
  'On a standby: waits up to timeout for sync_logical_slot_ready(slots); returns its last value.';
COMMENT ON FUNCTION sync_logical_slot_readiness(text[]) IS
  'On a standby: sync_logical_slot_ready(slots) with its verdict''s source (pass: this worker''s passes; disk: the records kept with the copies, read at start while no pass has reached the primary), the oldest verdict''s time and age, the slots not ready, and why.';
