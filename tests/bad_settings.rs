//! # Malformed settings are refused with a reason; the server stays up on the old value
//!
//! ```text
//!  standby1: postgresql.conf edited with bad values, then reload or restart
//!  plain:    LOAD 'sync_logical_slot' without shared_preload_libraries
//! ```

mod common;
use common::*;

fn set_in_conf(node: &Node, line: &str) {
    node.append_conf(line);
}

#[test]
fn malformed_values_are_rejected_at_reload_and_start() {
    let dir = TestDir::new("bad_settings");
    let primary = dir.primary("primary");
    primary.start();
    let standby = dir.standby("standby1", &primary);
    standby.start();
    assert_eq!(
        standby.sql("SHOW sync_logical_slot.slot_names"),
        "name_like:%"
    );

    // Reload with a typo in the filter: refused with the reason, old value kept.
    let o = standby.log_offset();
    set_in_conf(&standby, "sync_logical_slot.slot_names = 'nam:foo'");
    standby.reload();
    standby.wait_for_log(
        "invalid value for parameter \"sync_logical_slot.slot_names\": \"nam:foo\"",
        o,
    );
    standby.wait_for_log("unrecognized selector \"nam:\"", o);
    assert!(standby.is_running());
    assert_eq!(
        standby.sql("SHOW sync_logical_slot.slot_names"),
        "name_like:%"
    );

    // A negative naptime and an unterminated quote in the connection string.
    let o = standby.log_offset();
    set_in_conf(&standby, "sync_logical_slot.slot_names = 'name_like:%'");
    set_in_conf(&standby, "sync_logical_slot.naptime = -5");
    set_in_conf(
        &standby,
        "sync_logical_slot.primary_conninfo = 'host=x password=''T0pS3cret'",
    );
    standby.reload();
    standby.wait_for_log("sync_logical_slot.naptime", o);
    standby.wait_for_log("unterminated quoted string", o);
    assert!(
        !standby.log_since(0).contains("T0pS3cret"),
        "{}",
        standby.log_tail()
    );
    assert_eq!(standby.sql("SHOW sync_logical_slot.naptime"), "200ms");
    assert_eq!(standby.sql("SHOW sync_logical_slot.primary_conninfo"), "");

    // The same bad values at server start: the server starts, with defaults, and says why.
    let o = standby.log_offset();
    standby.restart();
    standby.wait_for_log("sync_logical_slot.naptime", o);
    assert!(standby.is_running());
    assert_eq!(standby.sql("SHOW sync_logical_slot.naptime"), "1s");
    assert!(!standby.log_since(0).contains("T0pS3cret"));
    // Misspelled setting names under our prefix are flagged too.
    let o = standby.log_offset();
    set_in_conf(&standby, "sync_logical_slot.naptme = 5");
    standby.reload();
    standby.wait_for_log("sync_logical_slot.naptme", o);
    assert!(standby.is_running());
}

/// A typo in the slot list at server start does not fall back to the
/// default (which copies every slot): the value is kept, nothing is synced
/// (the copy made before stays as it is, not ready), the worker says why,
/// and sessions see nothing of it (parallel workers take the value too);
/// corrected and reloaded, the sync goes on.
#[test]
fn a_malformed_slot_list_at_start_syncs_nothing_and_says_why() {
    let dir = TestDir::new("bad_slot_list_at_start");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int)");
    let standby = dir.standby("standby1", &primary);
    standby.start();
    primary.sql("SELECT pg_create_logical_replication_slot('orders', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('other', 'test_decoding')");
    wait_for_copy(&standby, &primary, "orders");
    wait_for_copy(&standby, &primary, "other");
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "t");

    set_in_conf(&standby, "sync_logical_slot.slot_names = 'nam:orders'");
    let o = standby.log_offset();
    standby.restart();
    standby.wait_for_log(
        "sync_logical_slot cannot sync slots: sync_logical_slot.slot_names = 'nam:orders' is invalid (unrecognized selector \"nam:\"",
        o,
    );
    assert_eq!(
        standby.sql("SHOW sync_logical_slot.slot_names"),
        "nam:orders"
    );
    assert_eq!(forced_parallel_query(&standby).as_deref(), Ok("t"));
    // Not kept current, so not ready (the records of the last pass would
    // say ready), and nothing is dropped or moved.
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "f");
    let copies = "SELECT string_agg(slot_name || ' ' || confirmed_flush_lsn, ', ' ORDER BY slot_name) FROM pg_replication_slots";
    let before = standby.sql(copies);
    primary.sql("INSERT INTO t VALUES (1)");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('orders', NULL, NULL)");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('other', NULL, NULL)");
    standby.wait_for_catchup(&primary);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(standby.sql(copies), before, "a copy moved or was dropped");

    set_in_conf(
        &standby,
        "sync_logical_slot.slot_names = 'name:orders, other'",
    );
    standby.reload();
    wait_for_copy(&standby, &primary, "orders");
    wait_for_copy(&standby, &primary, "other");
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "t");
}

#[test]
fn loading_without_shared_preload_libraries_is_refused() {
    let dir = TestDir::new("no_preload");
    let plain = dir.plain("plain");
    plain.start();
    let err = plain.try_sql("LOAD 'sync_logical_slot'").unwrap_err();
    assert!(
        err.contains("sync_logical_slot must be loaded via shared_preload_libraries"),
        "{err}"
    );
    assert!(plain.is_running());
}

/// A typo in `sync_logical_slot.database` (a restart setting) is not a FATAL
/// restart loop: after the one failed connection, the worker says once what
/// is wrong, the status view shows it, and the worker waits; once the
/// database exists (created on the primary, replicated), it connects and syncs.
#[test]
fn a_missing_database_is_waited_for_not_a_restart_loop() {
    let dir = TestDir::new("missing_database");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int)");
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    let standby = dir.standby("standby1", &primary);
    standby.append_conf("sync_logical_slot.database = 'sls_typo'");
    let offset = standby.log_offset();
    standby.start();
    standby.wait_for_log(
        "database \"sls_typo\" (sync_logical_slot.database) does not exist on this server: the sync_logical_slot worker waits for it",
        offset,
    );
    standby.poll_query_until(
        "SELECT coalesce(slot_name, '-') || '|' || state || '|' || last_error FROM sync_logical_slot_status",
        "-|error|database \"sls_typo\" (sync_logical_slot.database) does not exist on this server",
    );
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "f");
    // Twenty seconds later: no further failed start (one FATAL at most, from
    // the first connection attempt), the same worker still waiting.
    let pid = standby.worker_pid();
    std::thread::sleep(std::time::Duration::from_secs(20));
    let log = standby.log_since(offset);
    let fatals = count(&log, "FATAL:  database \"sls_typo\" does not exist");
    assert!(fatals <= 1, "{fatals} failed starts:\n{log}");
    assert_eq!(
        count(&log, "the sync_logical_slot worker waits for it"),
        1,
        "{log}"
    );
    assert_eq!(
        standby.worker_pid(),
        pid,
        "the waiting worker was restarted"
    );
    assert!(standby.is_running());

    // The database appears (by replication): the worker connects and syncs.
    primary.sql("CREATE DATABASE sls_typo");
    standby.wait_for_log("database \"sls_typo\" exists now", offset);
    standby.poll_query_until(
        "SELECT count(*) FROM sync_logical_slot_status WHERE slot_name IS NULL",
        "0",
    );
    // The new copy reserves the standby's newest safe xid; it becomes
    // persistent once the primary's slot has decoded a running-xacts record
    // logged after that (one logged while a transaction still ran, an
    // autovacuum's say, does not move it): write, checkpoint and advance
    // until it is.
    let persistent = "SELECT NOT temporary FROM pg_replication_slots WHERE slot_name = 's1'";
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        primary.sql("INSERT INTO t VALUES (1)");
        primary.sql("CHECKPOINT");
        primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
        standby.wait_for_catchup(&primary);
        std::thread::sleep(std::time::Duration::from_millis(300));
        if standby.try_sql(persistent).as_deref() == Ok("t") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy of s1 never became persistent; status: {:?}\n{}",
            standby.try_sql("SELECT * FROM sync_logical_slot_status"),
            standby.log_tail()
        );
    }
    wait_for_copy(&standby, &primary, "s1");
}
