//! # Failover under load: the subscriber ends with exactly the promoted standby's rows
//!
//! ```text
//!  primary (standby_slot_names = 'standby1') ──▶ standby1 (standby_slot_names = '': no standby of its own)
//!    writer: one INSERT a transaction, all along; standby1 stopped for a
//!    second (it falls behind), then kill -9 of the primary, standby1 started
//!    slot sub ◀── subscriber (CREATE SUBSCRIPTION), repointed to standby1 once promoted
//! ```
//! docs/design.md invariant 7: the subscriber never received a row the standby
//! lacked, so after the failover it has no row the new primary does not have,
//! and (its slot copied) none is missing or applied twice.

mod common;
use common::*;
use std::thread::sleep;
use std::time::Duration;

#[test]
fn subscriber_has_exactly_the_promoted_rows() {
    let dir = TestDir::new("failover_no_extra_rows");
    let primary = dir.primary("primary");
    primary.append_conf("sync_logical_slot.standby_slot_names = 'standby1'");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("CREATE PUBLICATION pub FOR TABLE t");
    let standby = dir.standby("standby1", &primary);
    // Once promoted it has no standby of its own yet: nothing to wait for.
    standby.append_conf("sync_logical_slot.standby_slot_names = ''");
    standby.start();
    let subscriber = subscriber_of(&dir, &primary);
    primary.sql("INSERT INTO t VALUES (1, 'first')");
    primary.sql("CHECKPOINT");
    subscriber.poll_query_until("SELECT count(*) FROM t", "1");
    standby.poll_query_until(
        "SELECT ready FROM sync_logical_slot_status WHERE slot_name = 'sub'",
        "t",
    );

    let mut writer = Writer::start(&primary, 1_000_000);
    sleep(Duration::from_secs(1));
    // The standby goes down for a second while the primary goes on
    // committing; then the primary dies: the rows it had alone die with it.
    standby.stop();
    sleep(Duration::from_secs(1));
    primary.kill9();
    writer.stop();
    standby.start();
    standby.promote();
    standby.poll_query_until("SELECT pg_is_in_recovery()", "f");
    subscriber.sql(&format!(
        "ALTER SUBSCRIPTION sub CONNECTION '{}'",
        standby.conninfo("postgres")
    ));
    standby.sql("INSERT INTO t VALUES (2, 'after the failover')");
    subscriber.poll_query_until("SELECT count(*) FROM t WHERE id = 2", "1");
    let promoted = table_ids(&standby, "postgres");
    assert!(promoted.len() > 10, "the load should have committed rows");
    assert_exactly_once(
        &table_ids(&subscriber, "postgres"),
        &promoted,
        "the subscriber across a failover under load",
    );
}
