//! # A transaction prepared before two-phase decoding was enabled arrives after a failover
//!
//! ```text
//!  primary (max_prepared_transactions)  --streaming-->  standby1 (promoted)
//!    table s: its sync held (a trigger on the subscriber waits for a lock)
//!    slot sub: two_phase pending while the        copy of sub, with the primary's two_phase_at
//!    table sync is held, then enabled at LSN X
//!    PREPARE TRANSACTION 'p1' before X            COMMIT PREPARED 'p1' after the failover
//!                   subscriber (two_phase = true) ──┘ follows the promoted standby
//! ```
//! A subscription with `two_phase = true` enables two-phase decoding on its
//! slot only after its table sync; the slot records where (`two_phase_at`,
//! in its state file only). A transaction prepared before that point was
//! never sent as a PREPARE, so at COMMIT PREPARED decoding sends it whole.
//! A copy without the primary's `two_phase_at` would take the PREPARE for
//! sent and send the COMMIT PREPARED alone: the subscriber would never get
//! the row. The copy reads it from the primary
//! (`sync_logical_slot_read_slot_state`) and is not ready before.

mod common;
use common::*;

#[test]
fn a_transaction_prepared_before_two_phase_was_enabled_arrives_after_failover() {
    let dir = TestDir::new("two_phase_failover");
    let primary = dir.primary("primary");
    primary.append_conf("max_prepared_transactions = 10");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("CREATE TABLE s (id int PRIMARY KEY)");
    primary.sql("CREATE PUBLICATION pub FOR TABLE t, s");
    let standby = dir.standby("standby1", &primary);
    standby.start();

    primary.sql("INSERT INTO s VALUES (1)");

    let subscriber = dir.plain("subscriber");
    subscriber.append_conf("max_prepared_transactions = 10");
    subscriber.start();
    subscriber.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    subscriber.sql("CREATE TABLE s (id int PRIMARY KEY)");
    // The sync of table s waits in its COPY, after it has made its slot (a
    // slot being made waits for prepared transactions, so it must exist
    // before p1): a trigger that fires during replication waits for an
    // advisory lock this session holds. Two-phase stays pending meanwhile.
    subscriber.sql(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_lock(42); PERFORM pg_advisory_unlock(42); RETURN NEW; END $$",
    );
    subscriber.sql("CREATE TRIGGER hold BEFORE INSERT ON s FOR EACH ROW EXECUTE FUNCTION hold()");
    subscriber.sql("ALTER TABLE s ENABLE REPLICA TRIGGER hold");
    let mut lock = Session::open(&subscriber, "postgres");
    lock.send("SELECT pg_advisory_lock(42);");
    subscriber.poll_query_until(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        "1",
    );
    subscriber.sql(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub WITH (two_phase = true)",
        primary.conninfo("postgres")
    ));
    subscriber.poll_query_until(
        "SELECT srsubstate FROM pg_subscription_rel WHERE srrelid = 't'::regclass",
        "r",
    );
    subscriber.poll_query_until(
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "t",
    );
    assert_eq!(
        primary.sql("SELECT two_phase FROM pg_replication_slots WHERE slot_name = 'sub'"),
        "f"
    );
    assert_eq!(
        subscriber.sql("SELECT subtwophasestate FROM pg_subscription"),
        "p"
    );

    // Prepared while two-phase decoding is not enabled on the slot.
    primary.sql("BEGIN; INSERT INTO t VALUES (1, 'prepared early'); PREPARE TRANSACTION 'p1'");
    primary.sql("INSERT INTO t VALUES (2, 'committed')");

    // The sync goes on; two-phase decoding is enabled on the slot, after p1.
    lock.send("SELECT pg_advisory_unlock(42);");
    drop(lock);
    subscriber.poll_query_until("SELECT subtwophasestate FROM pg_subscription", "e");
    primary.poll_query_until(
        "SELECT two_phase FROM pg_replication_slots WHERE slot_name = 'sub'",
        "t",
    );
    subscriber.poll_query_until("SELECT count(*) FROM t WHERE id = 2", "1");
    assert_eq!(subscriber.sql("SELECT count(*) FROM t WHERE id = 1"), "0");

    // The copy is ready only with the primary's two_phase_at.
    primary.sql("CHECKPOINT");
    primary.sql("INSERT INTO t VALUES (3, 'committed')");
    subscriber.poll_query_until("SELECT count(*) FROM t WHERE id = 3", "1");
    standby.wait_for_catchup(&primary);
    wait_for_copy(&standby, &primary, "sub");
    assert_eq!(
        standby.sql("SELECT two_phase FROM pg_replication_slots WHERE slot_name = 'sub'"),
        "t"
    );

    // Failover: the primary stops hard, the standby is promoted, the
    // subscription follows it, and p1 is committed there.
    primary.kill9();
    standby.promote();
    standby.poll_query_until("SELECT pg_is_in_recovery()", "f");
    subscriber.sql("ALTER SUBSCRIPTION sub DISABLE");
    subscriber.sql(&format!(
        "ALTER SUBSCRIPTION sub CONNECTION '{}'",
        standby.conninfo("postgres")
    ));
    subscriber.sql("ALTER SUBSCRIPTION sub ENABLE");
    standby.sql("COMMIT PREPARED 'p1'");
    standby.sql("INSERT INTO t VALUES (4, 'after the failover')");
    subscriber.poll_query_until("SELECT count(*) FROM t WHERE id = 4", "1");
    assert_eq!(
        subscriber.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3,4",
        "the transaction prepared before two-phase was enabled is lost; subscriber log:\n{}",
        subscriber.log_tail()
    );
}
