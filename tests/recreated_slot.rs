//! # A slot re-created on the primary behind its copy is copied afresh, not trusted
//!
//! ```text
//!  primary ──streaming──▶ standby1 (drop_extra_slots = off)
//!    old: created first, never consumed
//!    s:   consumed, copied; then dropped and re-made as a copy of old (behind the copy)
//! ```
//! The copy of `s` is ahead of the new `s` on restart_lsn and catalog_xmin:
//! it was made from another slot. It is dropped and copied again (starting
//! temporary), never left claiming positions the primary's slot lacks.

mod common;
use common::*;

#[test]
fn slot_behind_its_copy_is_recopied() {
    let dir = TestDir::new("recreated_slot");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int)");
    let standby = dir.standby("standby1", &primary);
    // Keep the copy across the moment s is gone on the primary.
    standby.append_conf("sync_logical_slot.drop_extra_slots = off");
    standby.start();

    primary.sql("SELECT pg_create_logical_replication_slot('old', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    for i in 0..3 {
        primary.sql(&format!("INSERT INTO t VALUES ({i})"));
        primary.sql("CHECKPOINT");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    }
    wait_for_copy(&standby, &primary, "s");

    let offset = standby.log_offset();
    primary.sql("SELECT pg_drop_replication_slot('s')");
    primary.sql("SELECT pg_copy_logical_replication_slot('old', 's')");
    standby.wait_for_log("re-creating replication slot \"s\"", offset);
    standby.wait_for_log("is behind the copy", offset);
    // The new copy follows the new slot once it moves on.
    primary.sql("INSERT INTO t VALUES (10)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    wait_for_copy(&standby, &primary, "s");
}
