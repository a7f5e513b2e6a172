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
-- readiness functions their arguments, so they are made anew. An object of
-- yours over them (a view over sync_logical_slot_status) stops the update
-- with its name: drop it, update, make it again. Privileges you granted on
-- them go with them: the update ends with a WARNING that gives the GRANT
-- statements to run again (pg_monitor's are the new objects' own).
\echo Use "ALTER EXTENSION sync_logical_slot UPDATE TO '0.2.0'" to load this file. \quit

-- Objects of yours over what this update re-creates would have to go with
-- it: refuse before anything changes, and name them.
DO $check$
DECLARE
    theirs text;
BEGIN
    SELECT string_agg(DISTINCT pg_describe_object(o.classid, o.objid, 0), ', ')
      INTO theirs
      FROM (SELECT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass ELSE d.classid END AS classid,
                   CASE WHEN d.classid = 'pg_rewrite'::regclass
                        THEN (SELECT r.ev_class FROM pg_rewrite r WHERE r.oid = d.objid) ELSE d.objid END AS objid
              FROM pg_depend d
             WHERE d.deptype = 'n'
               AND (d.refclassid, d.refobjid) IN (
                     ('pg_class'::regclass, 'sync_logical_slot_status'::regclass),
                     ('pg_proc'::regclass, 'sync_logical_slot_status_rows()'::regprocedure),
                     ('pg_proc'::regclass, 'sync_logical_slot_ready()'::regprocedure),
                     ('pg_proc'::regclass, 'sync_logical_slot_wait_ready(interval)'::regprocedure))) o
     WHERE NOT (o.classid = 'pg_class'::regclass AND o.objid = 'sync_logical_slot_status'::regclass)
       AND NOT EXISTS (SELECT FROM pg_depend e
                        WHERE e.classid = o.classid AND e.objid = o.objid AND e.deptype = 'e');
    IF theirs IS NOT NULL THEN
        RAISE EXCEPTION 'sync_logical_slot 0.2.0 re-creates its status view and readiness functions, and objects of yours depend on them: %', theirs
            USING HINT = 'Drop them, run ALTER EXTENSION sync_logical_slot UPDATE again, then make them again (CHANGELOG, "Upgrading from 0.1.0").';
    END IF;
END
$check$;

-- Privileges you granted on them (to an HA manager's role, say), noted to
-- be named at the end: the owner's and pg_monitor's are the new objects' own.
SELECT set_config('sync_logical_slot_upgrade.grants', coalesce(string_agg(format('GRANT %s ON %s TO %s', g.privilege_type, g.target,
                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END), '; '), ''), true)
  FROM (SELECT a.privilege_type, o.target, a.grantee, a.grantor
          FROM (VALUES ('sync_logical_slot_ready()'::regprocedure::oid, 'FUNCTION sync_logical_slot_ready(text[])'),
                       ('sync_logical_slot_wait_ready(interval)'::regprocedure::oid, 'FUNCTION sync_logical_slot_wait_ready(interval, text[])'),
                       ('sync_logical_slot_status_rows()'::regprocedure::oid, 'FUNCTION sync_logical_slot_status_rows()')) o(oid, target),
               LATERAL aclexplode((SELECT proacl FROM pg_proc WHERE pg_proc.oid = o.oid)) a
        UNION ALL
        SELECT a.privilege_type, 'sync_logical_slot_status', a.grantee, a.grantor
          FROM aclexplode((SELECT relacl FROM pg_class WHERE oid = 'sync_logical_slot_status'::regclass)) a) g
 WHERE g.grantee <> g.grantor AND g.grantee <> 'pg_monitor'::regrole;

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

-- The privileges found above are not granted again here: granted inside
-- an extension script they would count as the extension's own, and a dump
-- would leave them out. The update says what to run.
DO $grant$
BEGIN
    IF current_setting('sync_logical_slot_upgrade.grants', true) <> '' THEN
        RAISE WARNING 'the privileges you granted on sync_logical_slot''s status view and readiness functions went with the old objects'
            USING DETAIL = 'Roles with pg_monitor keep theirs: the new objects are granted to it.',
                  HINT = 'Grant them again: ' || current_setting('sync_logical_slot_upgrade.grants', true) || ';';
    END IF;
END
$grant$;
