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
