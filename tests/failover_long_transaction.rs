//! # Failover under load, with a transaction open across the copy's restart_lsn: nothing skipped
//!
//! ```text
//!  primary ──streaming──▶ standby1 ──(promoted after primary is killed)
//!    slot s (test_decoding), consumed with pg_logical_slot_get_changes
//!    session L: BEGIN; SELECT txid_current();   -- open all along, no WAL of its own
//!    writer: one INSERT a transaction, all along
//!    CHECKPOINT: running-xacts records that list L; restart_lsn moves past L's start
//! ```
//! docs/design.md invariant 4. Decoding from a copy's restart_lsn without the
//! primary's serialized snapshot for it would wait for L to end before it is
//! consistent, and skip every commit until then, though the consumer has not
//! seen them. With the snapshot file copied, the consumer continues from its
//! own position on the promoted standby and gets every committed change after
//! it, exactly once. Three runs, stopping the consumer after 1, 2, 3 rounds.

mod common;
use common::*;

#[test]
fn no_change_is_skipped_after_failover_with_an_open_transaction() {
    for rounds in 1..=3 {
        run(rounds);
    }
}

fn consume(node: &Node) -> Vec<i64> {
    let text = node.sql("SELECT data FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    inserted_ids(&text)
}

fn run(rounds: i64) {
    let dir = TestDir::new(&format!("failover_long_transaction_{rounds}"));
    let (primary, standby) = primary_and_standby(&dir);

    primary.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (1, 'first')");
    primary.sql("CHECKPOINT");
    let mut received = consume(&primary);
    wait_for_copy(&standby, &primary, "s");

    // L: an xid, no WAL; it stays open until the primary dies.
    let mut long = Session::open(&primary, "postgres");
    long.send("BEGIN; SELECT txid_current();");
    primary.poll_query_until(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL",
        "1",
    );

    let mut writer = Writer::start(&primary, 1_000_000);
    for _ in 0..rounds {
        primary.sql("SELECT pg_sleep(0.3)");
        primary.sql("CHECKPOINT");
        received.extend(consume(&primary));
    }
    // The consumer stops at its own position; the copy follows it there.
    let position =
        primary.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's'");
    wait_for_copy(&standby, &primary, "s");
    let restart = primary.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 's'");
    let first_restart =
        standby.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 's'");
    assert_eq!(first_restart, restart);

    // More commits the consumer has not seen, then the primary dies under load.
    primary.sql("SELECT pg_sleep(0.5)");
    standby.wait_for_catchup(&primary);
    primary.kill9();
    writer.stop();
    drop(long);
    standby.promote();
    standby.poll_query_until("SELECT pg_is_in_recovery()", "f");
    standby.sql("INSERT INTO t VALUES (2, 'after')");

    // The consumer continues from its own position.
    standby.sql(&format!(
        "SELECT pg_replication_slot_advance('s', '{position}') FROM pg_replication_slots
          WHERE slot_name = 's' AND confirmed_flush_lsn < '{position}'"
    ));
    received.extend(consume(&standby));
    let expected = table_ids(&standby, "postgres");
    assert!(
        expected.len() > 10,
        "the load should have committed rows after the consumer's position"
    );
    assert_exactly_once(
        &received,
        &expected,
        &format!("run with {rounds} round(s), consumer stopped at {position}, copy restart_lsn {restart}"),
    );
}
