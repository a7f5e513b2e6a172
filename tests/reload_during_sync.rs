//! # A configuration reload during a pass is not a slot error
//!
//! ```text
//!  primary ──streaming──▶ standby1 (naptime 10 ms: passes back to back)
//!    slots s00..s14, consumed all along   pg_reload_conf() x 30 on the standby
//! ```
//! A reload interrupts the worker's network waits so new settings apply at
//! once; it must not turn into an `error` state or an error line for a slot.

mod common;
use common::*;

const CONSUME_ALL: &str =
    "SELECT count(*) FROM pg_replication_slots s, LATERAL pg_logical_slot_get_changes(s.slot_name, NULL, NULL)
      WHERE s.slot_type = 'logical'";

#[test]
fn reloads_during_passes_leave_slots_synced() {
    let dir = TestDir::new("reload_during_sync");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    let standby = dir.standby("standby1", &primary);
    standby.append_conf("sync_logical_slot.naptime = 10ms");
    standby.start();
    primary.sql(
        "SELECT pg_create_logical_replication_slot(format('s%s', lpad(g::text, 2, '0')), 'test_decoding')
           FROM generate_series(0, 14) g",
    );
    primary.sql("CHECKPOINT");
    primary.sql(CONSUME_ALL);
    standby.poll_query_until(
        "SELECT count(*) FROM sync_logical_slot_status WHERE ready",
        "15",
    );

    // Slots that move make every pass read snapshot files from the primary:
    // network waits a reload interrupts.
    let offset = standby.log_offset();
    for _ in 0..30 {
        primary.sql("CHECKPOINT");
        primary.sql(CONSUME_ALL);
        standby.sql("SELECT pg_reload_conf()");
        assert_eq!(
            standby.sql("SELECT count(*) FROM sync_logical_slot_status WHERE state = 'error'"),
            "0",
            "{}",
            standby.log_since(offset)
        );
    }
    standby.poll_query_until(
        "SELECT count(*) FROM sync_logical_slot_status WHERE ready",
        "15",
    );
    primary.sql("CHECKPOINT");
    primary.sql(CONSUME_ALL);
    for g in 0..15 {
        wait_for_copy(&standby, &primary, &format!("s{g:02}"));
    }
    let log = standby.log_since(offset);
    assert!(!log.contains("could not sync replication slot"), "{log}");
    assert!(standby.is_running());
}
