//! # kill -9 of the standby mid-sync: no copy moves backwards, none claims WAL the standby lacks
//!
//! ```text
//!  primary ──streaming──▶ standby1   (killed with -9 and restarted, five times)
//!    slots a, b: consumed under a steady write load, CHECKPOINTs between
//! ```
//! docs/design.md invariants 1 and 6: after each crash restart, every persistent
//! copy is still there, its positions are not behind what the standby showed
//! before the crash, its confirmed_flush_lsn is within the WAL the standby
//! has, the WAL from its restart_lsn is on disk, and syncing goes on.

mod common;
use common::*;
use std::thread::sleep;
use std::time::Duration;

const COPIES: &str =
    "SELECT slot_name, temporary, restart_lsn, confirmed_flush_lsn, catalog_xmin::text::bigint
   FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT temporary ORDER BY slot_name";

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

struct Copy {
    name: String,
    restart: u64,
    confirmed: u64,
    xmin: u64,
}

fn copies(node: &Node) -> Vec<Copy> {
    node.sql(COPIES)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Copy {
                name: f[0].to_string(),
                restart: lsn(f[2]),
                confirmed: lsn(f[3]),
                xmin: f[4].parse().unwrap(),
            }
        })
        .collect()
}

#[test]
fn standby_crash_keeps_copies_forward_and_within_its_wal() {
    let dir = TestDir::new("standby_crash");
    let (primary, standby) = primary_and_standby(&dir);

    for slot in ["a", "b"] {
        primary.sql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"
        ));
    }
    primary.sql("INSERT INTO t VALUES (1, 'x')");
    primary.sql("CHECKPOINT");
    let consume = |slot: &str| {
        primary.sql(&format!(
            "SELECT count(*) FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"
        ));
    };
    consume("a");
    consume("b");
    wait_for_copy(&standby, &primary, "a");
    wait_for_copy(&standby, &primary, "b");

    let _writer = Writer::start(&primary, 1_000_000);
    for round in 0..5u64 {
        // Keep the slots moving, and kill the standby at a different moment each time.
        primary.sql("CHECKPOINT");
        consume("a");
        consume("b");
        sleep(Duration::from_millis(150 + 170 * round));
        let before = copies(&standby);
        assert_eq!(
            before.len(),
            2,
            "both copies are persistent before the crash"
        );
        standby.kill9();
        standby.start();

        let after = copies(&standby);
        let replayed = lsn(&standby.sql("SELECT pg_last_wal_replay_lsn()"));
        assert_eq!(
            after.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"],
            "round {round}: every persistent copy survives the crash"
        );
        for (b, a) in before.iter().zip(&after) {
            assert!(
                a.restart >= b.restart && a.confirmed >= b.confirmed && a.xmin >= b.xmin,
                "round {round}: copy {} moved backwards across the crash",
                a.name
            );
            assert!(
                a.confirmed <= replayed,
                "round {round}: copy {} claims {:X} but the standby has WAL up to {replayed:X} only",
                a.name,
                a.confirmed
            );
            let segment = format!(
                "{:08X}{:08X}{:08X}",
                1,
                a.restart >> 32,
                (a.restart & 0xFFFF_FFFF) / (16 * 1024 * 1024)
            );
            assert!(
                standby.datadir().join("pg_wal").join(&segment).exists(),
                "round {round}: the WAL segment {segment} of copy {}'s restart_lsn is gone",
                a.name
            );
        }
    }
    // Syncing goes on after the last restart.
    primary.sql("CHECKPOINT");
    consume("a");
    consume("b");
    wait_for_copy(&standby, &primary, "a");
    wait_for_copy(&standby, &primary, "b");
}
