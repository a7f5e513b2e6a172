//! # A copy is never persistent before the standby can honour it, and a waiting copy delays no other
//!
//! ```text
//!  primary                          --streaming, slot "standby1"-->  standby1
//!    lagging: created, then 5 xids burned, never consumed               copy of lagging: temporary, waiting_for_remote
//!    active:  created after, consumed all along                         copy of active: synced, follows
//! ```
//! The standby reserves catalog rows from its oldest safe decoding xid; the
//! primary's `lagging` slot is older than that, so its copy must stay a
//! temporary, not-ready slot (docs/design.md invariant 2) while `active` keeps
//! syncing (invariant 5). Once `lagging` is consumed past the reservation,
//! its copy becomes persistent and ready.

mod common;
use common::*;

#[test]
fn copy_waits_temporary_until_the_primary_passes_its_reservation() {
    let dir = TestDir::new("not_ready_until_safe");
    let (primary, standby) = lagging_and_active(&dir);
    standby.wait_for_log(
        "replication slot \"lagging\" is not ready: waiting_for_remote",
        0,
    );
    let reserved: u64 = standby
        .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 'lagging'")
        .parse()
        .expect("the copy's catalog_xmin");
    let remote: u64 = primary
        .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 'lagging'")
        .parse()
        .unwrap();
    assert!(
        remote < reserved,
        "the test needs the primary's slot (xmin {remote}) behind the standby's reservation (xmin {reserved})"
    );

    // Many passes later: still temporary, still not ready, and active keeps following.
    for i in 2..8 {
        primary.sql(&format!("INSERT INTO t VALUES ({i})"));
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('active', NULL, NULL)");
        wait_for_copy(&standby, &primary, "active");
        assert_eq!(
            standby.sql("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'lagging'"),
            "t",
            "a copy the standby cannot honour must stay temporary"
        );
        assert_eq!(
            standby.sql(
                "SELECT state, ready FROM sync_logical_slot_status WHERE slot_name = 'lagging'"
            ),
            "waiting_for_remote|f"
        );
        assert_eq!(
            standby
                .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 'lagging'"),
            reserved.to_string(),
            "a waiting copy keeps its reservation"
        );
    }
    assert_eq!(
        standby.sql("SELECT ready FROM sync_logical_slot_status WHERE slot_name = 'active'"),
        "t"
    );

    // The primary's slot moves past the reservation: a running-xacts record
    // (CHECKPOINT) decoded and confirmed raises its catalog_xmin.
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('lagging', NULL, NULL)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('lagging', NULL, NULL)");
    let moved: u64 = primary
        .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 'lagging'")
        .parse()
        .unwrap();
    assert!(
        moved >= reserved,
        "consuming should have moved the primary's catalog_xmin ({moved}) past {reserved}"
    );
    wait_for_copy(&standby, &primary, "lagging");
    assert_eq!(
        standby.sql("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'lagging'"),
        "f"
    );
}
