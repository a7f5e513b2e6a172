//! # Failover: pg_recvlogical and a subscription continue on the promoted standby, every change once
//!
//! ```text
//!  primary ──streaming──▶ standby1 ──(promoted after primary is killed)
//!    slot recv (test_decoding)  ◀── pg_recvlogical, to its own position X
//!    slot sub  (pgoutput)       ◀── subscriber (third cluster, CREATE SUBSCRIPTION)
//!                                    repointed with ALTER SUBSCRIPTION ... CONNECTION
//! ```
//! After a crash of the primary and promotion of the standby, both consumers
//! continue on the promoted standby from their own positions: pg_recvlogical
//! from X (`--startpos`), the subscription from its replication origin. Each
//! ends with exactly the rows of the promoted standby, none missing, none twice.

mod common;
use common::*;
use std::fs;

#[test]
fn consumers_continue_on_the_promoted_standby() {
    let dir = TestDir::new("failover");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("CREATE PUBLICATION pub FOR TABLE t");
    let standby = dir.standby("standby1", &primary);
    standby.start();

    let subscriber = subscriber_of(&dir, &primary);
    subscriber.poll_query_until(
        "SELECT count(*) = count(*) FILTER (WHERE srsubstate = 'r') FROM pg_subscription_rel",
        "t",
    );
    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");

    let insert = |node: &Node, from: i64, to: i64| {
        node.sql(&format!(
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series({from}, {to}) g"
        ));
    };
    let out = dir.path.join("recv.out");
    // Rows, a running-xacts record (so the copies can become persistent), more rows.
    insert(&primary, 1, 50);
    primary.sql("CHECKPOINT");
    for i in 0..5 {
        insert(&primary, 100 + i * 10, 100 + i * 10 + 9);
    }
    // pg_recvlogical consumes up to X, a point between transactions, and confirms it.
    let x = primary.sql("SELECT pg_current_wal_lsn()");
    recvlogical(&primary, "recv", None, &x, &out);
    primary.sql("CHECKPOINT");
    standby.poll_query_until(
        "SELECT count(*) FROM sync_logical_slot_status WHERE slot_name IN ('recv', 'sub') AND ready",
        "2",
    );
    subscriber.poll_query_until("SELECT count(*) FROM t", "100");

    // More rows the consumers have not confirmed, then the primary dies.
    for i in 0..5 {
        insert(&primary, 1000 + i * 10, 1000 + i * 10 + 9);
    }
    standby.wait_for_catchup(&primary);
    primary.kill9();
    standby.promote();
    standby.poll_query_until("SELECT pg_is_in_recovery()", "f");

    // The copies are ordinary slots now, free to use.
    assert_eq!(
        standby.sql("SELECT slot_name, temporary, active FROM pg_replication_slots WHERE slot_name IN ('recv', 'sub') ORDER BY 1"),
        "recv|f|f\nsub|f|f"
    );
    insert(&standby, 5000, 5009);

    // pg_recvlogical from its own position X.
    let y = standby.sql("SELECT pg_current_wal_lsn()");
    recvlogical(&standby, "recv", Some(&x), &y, &out);
    let expected = table_ids(&standby, "postgres");
    let got = inserted_ids(&fs::read_to_string(&out).unwrap());
    assert_exactly_once(&got, &expected, "pg_recvlogical across the failover");

    // The subscription, repointed.
    subscriber.sql(&format!(
        "ALTER SUBSCRIPTION sub CONNECTION '{}'",
        standby.conninfo("postgres")
    ));
    subscriber.poll_query_until("SELECT count(*) FROM t", &expected.len().to_string());
    // Let a duplicate, if any, arrive before comparing.
    insert(&standby, 6000, 6000);
    subscriber.poll_query_until("SELECT count(*) FILTER (WHERE id = 6000) FROM t", "1");
    let expected = table_ids(&standby, "postgres");
    assert_exactly_once(
        &table_ids(&subscriber, "postgres"),
        &expected,
        "the subscription across the failover",
    );
}
