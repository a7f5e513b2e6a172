//! # The worker copies only from this standby's own primary
//!
//! ```text
//!  primary ──streaming──▶ standby1   sync_logical_slot.primary_conninfo → other (another cluster): refused
//!          ──streaming──▶ standby2   sync_logical_slot.primary_conninfo → standby2 (in recovery):  refused
//!  other (plain cluster, slot s)                                          → primary again: copies
//! ```
//! Slot positions from another cluster, or from a standby's copies, are not
//! the slots a failover must continue; `drop_extra_slots` would even drop
//! copies by another server's list. The worker checks the system identifier
//! and that the server is not in recovery, and says why it refuses.

mod common;
use common::*;

#[test]
fn another_cluster_or_a_standby_is_refused() {
    let dir = TestDir::new("wrong_primary");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("SELECT pg_create_logical_replication_slot('mine', 'test_decoding')");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('mine', NULL, NULL)");
    let standby2 = dir.standby("standby2", &primary);
    standby2.start();
    let other = dir.plain("other");
    other.start();
    other.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");

    let standby = dir.standby("standby1", &primary);
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = '{}'",
        other.conninfo("postgres")
    ));
    standby.start();
    standby.wait_for_log(
        "the server sync_logical_slot connected to is not this standby's primary: its system identifier is",
        0,
    );
    standby.wait_for_log("HINT:  Point sync_logical_slot.primary_conninfo", 0);

    let o = standby.log_offset();
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = '{}'",
        standby2.conninfo("postgres")
    ));
    standby.reload();
    standby.wait_for_log(
        "the server sync_logical_slot connected to is not this standby's primary: it is in recovery itself",
        o,
    );
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"),
        "0",
        "nothing is copied from the wrong server"
    );

    // Move mine past standby1's base backup (the WAL before it is not there).
    for _ in 0..2 {
        primary.sql("CHECKPOINT");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('mine', NULL, NULL)");
    }
    standby.append_conf("sync_logical_slot.primary_conninfo = ''");
    standby.reload();
    wait_for_copy(&standby, &primary, "mine");
    assert_eq!(
        standby.sql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE slot_type = 'logical'"),
        "mine"
    );
}
