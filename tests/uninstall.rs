//! # Uninstalling: the copies on a standby are dropped on request, never a primary's slots
//!
//! ```text
//!  primary (slot s, failover_logical_slot_init: server master_fdw) ──▶ standby1 (copy of s)
//! ```
//! `sync_logical_slot_drop_copies()` is refused on the primary and while the
//! worker would copy the slots again; with `slot_names = ''` (and
//! `drop_extra_slots = off`, so that the worker leaves the copy alone) it
//! drops the copy and says how many. On the primary, DROP EXTENSION, then
//! the user mapping and the server: no function, server or mapping is left
//! (README, "Uninstalling").

mod common;
use common::*;

#[test]
fn copies_are_dropped_on_request_and_nothing_is_left() {
    let dir = TestDir::new("uninstall");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("SELECT count(*) FROM failover_logical_slot_init('127.0.0.1', '5432', 'postgres', 'postgres', 'unused-pw')");
    let standby = dir.standby("standby1", &primary);
    standby.start();
    primary.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    wait_for_copy(&standby, &primary, "s");

    let on_primary = primary
        .try_sql("SELECT sync_logical_slot_drop_copies()")
        .unwrap_err();
    assert!(
        on_primary.contains("this server is not a standby"),
        "{on_primary}"
    );
    let while_syncing = standby
        .try_sql("SELECT sync_logical_slot_drop_copies()")
        .unwrap_err();
    assert!(
        while_syncing.contains("still selects slots: the sync worker would copy them again"),
        "{while_syncing}"
    );
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'"),
        "1"
    );

    standby.append_conf(
        "sync_logical_slot.slot_names = ''\nsync_logical_slot.drop_extra_slots = off\n",
    );
    standby.reload();
    standby.poll_query_until("SHOW sync_logical_slot.slot_names", "");
    assert_eq!(standby.sql("SELECT sync_logical_slot_drop_copies()"), "1");
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"),
        "0"
    );
    assert!(
        !standby.datadir().join("pg_replslot/s").exists(),
        "the copy's directory is left"
    );
    // Again: nothing more to drop.
    assert_eq!(standby.sql("SELECT sync_logical_slot_drop_copies()"), "0");
    // The primary's own slot is untouched.
    assert_eq!(
        primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'"),
        "1"
    );

    // On the primary: the extension, then the server the set-up made.
    primary.sql("DROP EXTENSION sync_logical_slot");
    primary.sql("DROP USER MAPPING FOR postgres SERVER master_fdw");
    primary.sql("DROP SERVER master_fdw");
    assert_eq!(
        primary.sql(
            "SELECT (SELECT count(*) FROM pg_foreign_server WHERE srvname = 'master_fdw')
                  + (SELECT count(*) FROM pg_user_mappings WHERE srvname = 'master_fdw')
                  + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'sync_logical_slot%' OR proname = 'failover_logical_slot_init')"
        ),
        "0"
    );
}
