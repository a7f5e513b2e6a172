//! # Upgrading from 0.1.0: a rolling upgrade, then ALTER EXTENSION ... UPDATE
//!
//! ```text
//!  a (primary, extension 0.1.0) ──▶ a1 (standby)      new library on both
//!  b (primary, CREATE EXTENSION: the current version)
//! ```
//! With the extension's 0.1.0 objects still in the database, the new
//! library serves them (0.1.0's readiness functions and status view work on
//! the standby, the copy is synced) and the worker says an update is due.
//! A view of the DBA's over the status view stops the update, named; once
//! it is dropped, `ALTER EXTENSION sync_logical_slot UPDATE` on a says which
//! privileges to grant again and leaves exactly what a fresh install has on
//! b: every function (arguments with their defaults, result, strictness,
//! volatility, parallel safety, C symbol, owner, security, cost, settings,
//! privileges, comment), the view (owner, options, columns, definition,
//! privileges, comment) and the extension's comment; the standby gets the
//! new objects by replication, and ready() without arguments still works.

mod common;
use common::*;

use std::path::PathBuf;

/// The released 0.1.0 SQL (tests/fixtures), put where CREATE EXTENSION ...
/// VERSION '0.1.0' finds it.
fn install_previous_release() {
    let out = pg_command("pg_config")
        .arg("--sharedir")
        .output()
        .expect("pg_config --sharedir");
    let target = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("extension/sync_logical_slot--0.1.0.sql");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sync_logical_slot--0.1.0.sql");
    if std::fs::read(&target).ok() == std::fs::read(&fixture).ok() {
        return;
    }
    let copied = if is_root() {
        std::fs::copy(&fixture, &target).is_ok()
    } else {
        std::process::Command::new("sudo")
            .args(["-n", "install", "-m", "0644"])
            .arg(&fixture)
            .arg(&target)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        copied,
        "could not install {} as {} (run as root, or with password-less sudo)",
        fixture.display(),
        target.display()
    );
}

/// Everything the extension owns in the catalog, one line per object. (The
/// build scripts/test installs has the #[pg_test] functions too, in schema
/// "tests", which no release has: left out.)
const CATALOG: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'sync_logical_slot'),
members AS (SELECT classid, objid FROM pg_depend, ext
             WHERE refclassid = 'pg_extension'::regclass AND refobjid = ext.oid AND deptype = 'e'
               AND pg_describe_object(classid, objid, 0) <> 'schema tests'
               AND NOT (classid = 'pg_proc'::regclass
                        AND (SELECT nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                              WHERE p.oid = objid) = 'tests'))
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
  SELECT format('function %s(%s) returns %s strict=%s volatility=%s parallel=%s symbol=%s library=%s owner=%s secdef=%s leakproof=%s cost=%s rows=%s config=%s acl=%s comment=%s',
                p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                p.proisstrict, p.provolatile, p.proparallel, p.prosrc, p.probin,
                pg_get_userbyid(p.proowner), p.prosecdef, p.proleakproof, p.procost, p.prorows,
                p.proconfig::text, p.proacl::text, obj_description(p.oid, 'pg_proc')) AS line
    FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  UNION ALL
  SELECT format('relation %s kind=%s owner=%s options=%s columns=%s def=%s acl=%s comment=%s',
                c.relname, c.relkind, pg_get_userbyid(c.relowner), c.reloptions::text,
                (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                   FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
                pg_get_viewdef(c.oid), c.relacl::text, obj_description(c.oid, 'pg_class'))
    FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
  UNION ALL
  SELECT format('member of another kind: %s', pg_describe_object(m.classid, m.objid, 0))
    FROM members m WHERE m.classid NOT IN ('pg_proc'::regclass, 'pg_class'::regclass)
  UNION ALL
  SELECT format('extension %s version %s comment=%s', extname, extversion, obj_description(oid, 'pg_extension'))
    FROM pg_extension WHERE extname = 'sync_logical_slot'
) lines
"#;

#[test]
fn from_0_1_0_rolling_then_update_equals_a_fresh_install() {
    install_previous_release();
    let dir = TestDir::new("upgrade");
    let a = dir.primary("a");
    a.start();
    a.sql("CREATE EXTENSION sync_logical_slot VERSION '0.1.0' CASCADE");
    assert_eq!(
        a.sql("SELECT extversion FROM pg_extension WHERE extname = 'sync_logical_slot'"),
        "0.1.0"
    );
    let before = a.sql(CATALOG);
    assert!(
        before.contains("function sync_logical_slot_ready() returns boolean"),
        "not 0.1.0's objects:\n{before}"
    );

    // The new library with 0.1.0's objects: the standby syncs, and 0.1.0's
    // functions and view answer there.
    let offset = 0;
    let a1 = dir.standby("a1", &a);
    a1.start();
    a.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    a1.wait_for_log(
        &format!(
            "the sync_logical_slot extension in database \"postgres\" is version 0.1.0, the library {}",
            env!("CARGO_PKG_VERSION")
        ),
        offset,
    );
    a1.poll_query_until("SELECT sync_logical_slot_wait_ready('1s')", "t");
    assert_eq!(a1.sql("SELECT sync_logical_slot_ready()"), "t");
    assert_eq!(
        a1.sql("SELECT concat_ws(' ', slot_name, state, ready) FROM sync_logical_slot_status"),
        "s synced t"
    );
    assert!(
        a1.try_sql("SELECT sync_logical_slot_ready(ARRAY['s'])")
            .is_err(),
        "0.1.0 has no slot list"
    );

    // A DBA's own objects over what the update re-creates: a view stops it,
    // named; privileges granted to another role are named to grant again.
    a.sql("CREATE ROLE ha_gate");
    a.sql("GRANT EXECUTE ON FUNCTION sync_logical_slot_ready() TO ha_gate");
    a.sql("GRANT SELECT ON sync_logical_slot_status TO ha_gate");
    a.sql("CREATE VIEW my_status AS SELECT slot_name FROM sync_logical_slot_status");
    let refused = a
        .try_sql("ALTER EXTENSION sync_logical_slot UPDATE")
        .unwrap_err();
    assert!(
        refused.contains("objects of yours depend on them: view my_status"),
        "{refused}"
    );
    a.sql("DROP VIEW my_status");

    // The update, on the primary; the standby gets it by replication.
    let update = psql(a.port, "postgres")
        .args(["-A", "-t", "-c", "ALTER EXTENSION sync_logical_slot UPDATE"])
        .output()
        .expect("psql");
    let said = String::from_utf8_lossy(&update.stderr);
    assert!(update.status.success(), "{said}");
    for grant in [
        "GRANT EXECUTE ON FUNCTION sync_logical_slot_ready(text[]) TO ha_gate",
        "GRANT SELECT ON sync_logical_slot_status TO ha_gate",
    ] {
        assert!(
            said.contains(grant),
            "the update did not say {grant:?}:\n{said}"
        );
    }
    let b = dir.primary("b");
    b.start();
    b.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    let fresh = b.sql(CATALOG);
    assert!(
        fresh.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))),
        "{fresh}"
    );
    assert_eq!(
        a.sql(CATALOG),
        fresh,
        "after ALTER EXTENSION UPDATE the catalog differs from a fresh install"
    );
    a1.wait_for_catchup(&a);
    // A gate that calls ready() without arguments works on: the new
    // function's slot list defaults to NULL.
    assert_eq!(a1.sql("SELECT sync_logical_slot_ready()"), "t");
    assert_eq!(
        a1.sql("SELECT concat_ws(' ', ready, verdict_source) FROM sync_logical_slot_readiness(ARRAY['s'])"),
        "t pass"
    );
    assert_eq!(
        a1.sql(
            "SELECT concat_ws(' ', slot_name, ready, verdict_source) FROM sync_logical_slot_status"
        ),
        "s t pass"
    );
}
