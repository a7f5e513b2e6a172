//! # Switchover and back: slots keep syncing on the node that became the standby
//!
//! ```text
//!  a (primary) ──▶ b (standby)     slot s on a, copied to b
//!  a stops, b is promoted, a follows b: a still has its own slot s
//!  b (primary) ──▶ a (standby)     a replaces its old s with a copy of b's s
//!  b stops, a is promoted, b follows a: b has its promoted copy s
//!  a (primary) ──▶ b (standby)     b replaces it with a copy of a's s
//! ```
//! A slot left from a server's time as primary is replaced by a fresh copy
//! (its positions belong to another history), never left blocking the sync.

mod common;
use common::*;

fn consume(node: &Node) {
    node.sql("INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t");
    node.sql("CHECKPOINT");
    node.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s', NULL, NULL)");
}

/// Waits until the primary's worker has marked slot s as its own.
fn wait_marked(node: &Node) {
    let marker = node
        .datadir()
        .join("pg_replslot/s/sync_logical_slot.primary");
    let deadline = std::time::Instant::now() + DEADLINE;
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never marked slot s as its own",
            node.name
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn switch(from: &Node, to: &Node, slot: &str) {
    to.wait_for_catchup(from);
    from.stop();
    to.promote();
    to.poll_query_until("SELECT pg_is_in_recovery()", "f");
    from.follow(to, slot);
    from.start();
}

/// Switches over from `from` to `to`; then `from`, now a standby, replaces its
/// leftover slot s with a copy of `to`'s, which follows it; `to` marks its s.
fn switch_and_resync(from: &Node, to: &Node, physical_slot: &str) {
    let offset = from.log_offset();
    switch(from, to, physical_slot);
    consume(to);
    from.wait_for_log("re-creating replication slot \"s\"", offset);
    consume(to);
    wait_for_copy(from, to, "s");
    wait_marked(to);
}

/// Starts primary `a` (configured by the caller) with table t and slot s,
/// and its standby b with s copied; a has marked s as its own.
fn pair_with_slot_s(dir: &TestDir, a: &Node) -> Node {
    a.start();
    a.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    a.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let b = dir.standby("b", a);
    b.start();
    a.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    consume(a);
    wait_for_copy(&b, a, "s");
    wait_marked(a);
    b
}

#[test]
fn switchover_and_back_keeps_slots_syncing() {
    let dir = TestDir::new("switchover");
    let a = dir.primary("a");
    let b = pair_with_slot_s(&dir, &a);

    // a → b, and back: b → a.
    switch_and_resync(&a, &b, "a");
    switch_and_resync(&b, &a, "b");
}

/// A transaction prepared before a switchover holds slot s's restart_lsn back
/// until it ends. The old primary, now a standby, still has the WAL from that
/// restart_lsn on: its new copy reserves it there and is ready at once, while
/// the transaction is still prepared (before, the copy waited for the
/// primary's slot to pass the standby's restartpoint, so the way back was
/// blocked until the transaction ended). Once promoted, the copy decodes the
/// transaction when it commits.
#[test]
fn a_slot_held_back_by_a_prepared_transaction_is_ready_after_a_switchover() {
    let dir = TestDir::new("switchover-held");
    let a = dir.primary("a");
    a.append_conf("max_prepared_transactions = 5\n");
    let b = pair_with_slot_s(&dir, &a);

    a.sql("BEGIN; INSERT INTO t VALUES (-1); PREPARE TRANSACTION 'held'");
    let prepared_at = a.sql("SELECT pg_current_wal_lsn()");
    for _ in 0..3 {
        consume(&a);
    }
    assert_eq!(
        a.sql(&format!(
            "SELECT restart_lsn < '{prepared_at}' AND confirmed_flush_lsn > '{prepared_at}' FROM pg_replication_slots WHERE slot_name = 's'"
        )),
        "t",
        "the prepared transaction holds s's restart_lsn back while its consumer reads on"
    );

    let offset = a.log_offset();
    switch(&a, &b, "a");
    consume(&b);
    a.wait_for_log("re-creating replication slot \"s\"", offset);
    // The catalog side does not hold the copy back either: a still has b's
    // physical slot, with the catalog_xmin of b's feedback as of the
    // switchover (that of b's copy of s), so the copy's catalog_xmin (a's
    // oldest safe decoding xid) is no newer than s's on b.
    let xid = |n: &Node, sql: &str| -> u64 {
        n.sql(sql).parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let kept = xid(
        &a,
        "SELECT catalog_xmin::text FROM pg_replication_slots WHERE slot_name = 'b'",
    );
    let remote = xid(
        &b,
        "SELECT catalog_xmin::text FROM pg_replication_slots WHERE slot_name = 's'",
    );
    assert!(
        kept <= remote,
        "b's slot on a holds {kept}, s on b {remote}"
    );
    consume(&b);
    wait_for_copy(&a, &b, "s");
    assert_eq!(
        b.sql("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'held'"),
        "1",
        "the copy was ready while the transaction was still prepared"
    );

    // And back, then the transaction commits on a: decoded from the copy.
    switch(&b, &a, "b");
    a.sql("COMMIT PREPARED 'held'");
    let changes =
        a.sql("SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    assert!(
        changes.contains("table public.t: INSERT: id[integer]:-1"),
        "the held transaction was not decoded from the promoted copy:\n{changes}"
    );
}
