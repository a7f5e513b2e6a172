//! # A slot invalidated on the primary is reported, its copy released, and it stalls no other slot
//!
//! ```text
//!  primary (max_slot_wal_keep_size = 32MB)   --streaming-->  standby1
//!    doomed: consumed once, then never: its WAL is removed    copy: dropped, state invalidated
//!    active: consumed all along                                copy: synced, follows
//! ```
//! The copy of the invalidated slot would pin the standby's WAL for ever
//! (its consumer cannot go on from it anyway): it is dropped, and the
//! standby's restartpoints remove the WAL it held.

mod common;
use common::*;

#[test]
fn invalidated_slot_is_reported_and_others_go_on() {
    let dir = TestDir::new("invalidated_slot");
    let primary = dir.primary("primary");
    primary.append_conf("max_slot_wal_keep_size = 32MB");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");

    let standby = dir.standby("standby1", &primary);
    standby.start();

    primary.sql("SELECT pg_create_logical_replication_slot('doomed', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('active', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (0, 'x')");
    // A running-xacts record (CHECKPOINT), decoded, moves the slots' catalog_xmin
    // past what the standby reserves for a new copy.
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('doomed', NULL, NULL)");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('active', NULL, NULL)");
    wait_for_copy(&standby, &primary, "doomed");
    wait_for_copy(&standby, &primary, "active");
    let doomed_restart =
        standby.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'doomed'");

    // Push WAL past doomed's reservation, a segment switch a round; active
    // keeps being consumed (each CHECKPOINT logs the running-xacts record
    // that lets its restart_lsn follow).
    let offset = standby.log_offset();
    for round in 1..=4 {
        primary.sql(&format!("INSERT INTO t VALUES ({round}, 'x')"));
        primary.sql("SELECT pg_switch_wal()");
        standby.wait_for_catchup(&primary);
        primary.sql("CHECKPOINT");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('active', NULL, NULL)");
    }
    primary.poll_query_until(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'doomed'",
        "lost",
    );

    standby.poll_query_until(&status_of("doomed"), "invalidated");
    standby.wait_for_log(
        "replication slot \"doomed\" is invalidated on the primary server: not syncing it",
        offset,
    );
    // The others go on.
    primary.sql("INSERT INTO t VALUES (100, 'y')");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('active', NULL, NULL)");
    wait_for_copy(&standby, &primary, "active");
    assert_eq!(
        standby.sql("SELECT state, ready FROM sync_logical_slot_status ORDER BY slot_name"),
        "synced|t\ninvalidated|f"
    );
    // The copy of the invalidated slot is gone, and the view says why.
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'"),
        "0"
    );
    let at = standby.wait_for_log("dropped the copy of replication slot \"doomed\"", offset);
    // The cause, in the log and in the view (PostgreSQL 15 and 16 name it alike).
    assert!(
        standby
            .log_since(at)
            .contains("The slot is invalidated on the primary (wal_removed)"),
        "{}",
        standby.log_since(at)
    );
    assert!(
        standby
            .sql("SELECT last_error FROM sync_logical_slot_status WHERE slot_name = 'doomed'")
            .contains("invalidated on the primary (wal_removed)"),
        "{}",
        standby.sql("SELECT * FROM sync_logical_slot_status")
    );
    // So the standby's WAL no longer stays from doomed's restart_lsn on: after
    // more WAL and restartpoints, its oldest segment is past that position.
    let oldest_segment = "SELECT min(('x' || substr(name, 9, 8))::bit(32)::bigint * 256
                                  + ('x' || substr(name, 17, 8))::bit(32)::bigint)
                            FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'";
    let doomed_segment =
        format!("SELECT (('{doomed_restart}'::pg_lsn - '0/0') / 16777216)::bigint");
    let doomed_segment: i64 = standby.sql(&doomed_segment).parse().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        primary.sql("INSERT INTO t VALUES (200, 'z') ON CONFLICT DO NOTHING");
        primary.sql("SELECT pg_switch_wal()");
        primary.sql("CHECKPOINT");
        standby.wait_for_catchup(&primary);
        standby.sql("CHECKPOINT");
        let oldest: i64 = standby.sql(oldest_segment).parse().unwrap();
        if oldest > doomed_segment {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby still keeps WAL from segment {oldest} (doomed's copy restarted in {doomed_segment})"
        );
    }
}
