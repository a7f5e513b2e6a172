//! # Promotion: persistent copies become ordinary slots; copies that were never safe are dropped
//!
//! ```text
//!  primary ──streaming──▶ standby1 ──(promoted)
//!    active:  consumed            copy: persistent, ready      → kept, usable at once
//!    lagging: behind the standby  copy: temporary, waiting     → dropped at promotion
//! ```
//! docs/design.md invariant 6. A restart of the standby before the promotion keeps
//! the persistent copy (temporary ones are re-created by the worker).

mod common;
use common::*;

#[test]
fn promotion_keeps_persistent_copies_and_drops_temporary_ones() {
    let dir = TestDir::new("promotion");
    let (primary, standby) = lagging_and_active(&dir);

    // A restart keeps the persistent copy; the temporary one comes back, waiting.
    standby.restart();
    assert_eq!(
        standby.sql("SELECT slot_name FROM pg_replication_slots WHERE NOT temporary AND slot_type = 'logical'"),
        "active"
    );
    standby.poll_query_until(&status_of("lagging"), "waiting_for_remote");
    wait_for_copy(&standby, &primary, "active");

    // Changes the copy has not been told about yet: the promoted slot decodes them.
    primary.sql("INSERT INTO t VALUES (2)");
    standby.wait_for_catchup(&primary);
    let offset = standby.log_offset();
    primary.stop();
    standby.promote();
    standby.wait_for_log(
        "server is no longer in recovery: sync_logical_slot stops syncing slots",
        offset,
    );
    standby.poll_query_until(
        "SELECT string_agg(slot_name || ':' || temporary, ',') FROM pg_replication_slots WHERE slot_type = 'logical'",
        "active:false",
    );
    assert_eq!(
        standby.sql("SELECT count(*) FROM sync_logical_slot_status"),
        "0"
    );
    standby.poll_query_until(WORKER_ACTIVITY, "idle: this server is not a standby");
    // Usable at once, from where the primary's consumer left off.
    let changes = standby.sql("SELECT data FROM pg_logical_slot_get_changes('active', NULL, NULL)");
    assert_eq!(inserted_ids(&changes), vec![2], "{changes}");
}
