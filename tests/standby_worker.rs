//! # The worker runs on the standby, reads the primary's slots, and idles on the primary
//!
//! ```text
//!  primary (wal_level=logical)  --streaming, slot "standby1"-->  standby1
//!    logical slots s_app, s_other                                 worker: reads the primary's slots
//!    worker: idle (not a standby)
//! ```
//! The standby's worker connects with application_name=sync_logical_slot and
//! sees the slots the filter selects; the primary's worker makes no connection.

mod common;
use common::*;

const WORKER: &str =
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sync_logical_slot worker'";

#[test]
fn worker_reads_primary_slots_on_standby_and_idles_on_primary() {
    let dir = TestDir::new("standby_worker");
    let primary = dir.primary("primary");
    primary.append_conf("sync_logical_slot.slot_names = 'name_like:s_%'");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    assert_eq!(
        primary.sql("SELECT extname FROM pg_extension WHERE extname IN ('sync_logical_slot', 'postgres_fdw') ORDER BY 1"),
        "postgres_fdw\nsync_logical_slot"
    );

    // The primary's worker runs, says it is idle, and connects nowhere.
    primary.poll_query_until(WORKER, "1");
    primary.poll_query_until(WORKER_ACTIVITY, "idle: this server is not a standby");
    primary.wait_for_log(
        "sync_logical_slot worker is idle: this server is not a standby",
        0,
    );
    assert_eq!(primary.sql(CONNECTIONS_FROM_WORKERS), "0");

    primary.sql("SELECT pg_create_logical_replication_slot('s_app', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('x_excluded', 'test_decoding')");

    let standby = dir.standby("standby1", &primary);
    let offset = standby.log_offset();
    standby.start();

    // The standby's worker connects to the primary under its own name...
    standby.poll_query_until(WORKER, "1");
    primary.poll_query_until(CONNECTIONS_FROM_WORKERS, "1");
    assert_eq!(
        primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot' AND backend_type = 'walsender'"),
        "1",
        "the worker's connection should be a replication=database walsender"
    );
    standby.wait_for_log(
        "sync_logical_slot worker connected to the primary server",
        offset,
    );
    standby.wait_for_log(
        "Connection settings come from this standby's primary_conninfo.",
        offset,
    );

    // ...and sees what the filter selects: s_app, not x_excluded.
    let after = standby.wait_for_log(
        "primary server has 1 logical slot(s) selected for sync",
        offset,
    );
    assert!(
        standby.log_since(offset).contains("Selected slots: s_app."),
        "{}",
        standby.log_tail()
    );
    standby.poll_query_until(
        "SELECT query LIKE '1 slot(s) selected for sync, _ ready; last pass % ms' FROM pg_stat_activity WHERE backend_type = 'sync_logical_slot worker'",
        "t",
    );

    // A new slot on the primary is noticed.
    primary.sql("SELECT pg_create_logical_replication_slot('s_new', 'pgoutput')");
    standby.wait_for_log(
        "primary server has 2 logical slot(s) selected for sync",
        after,
    );
    assert!(standby
        .log_since(after)
        .contains("Selected slots: s_app, s_new."));

    // With the standby gone, no connection from any worker remains on the primary:
    // the primary's own worker does no sync work.
    standby.stop();
    primary.poll_query_until(CONNECTIONS_FROM_WORKERS, "0");
    primary.poll_query_until(WORKER_ACTIVITY, "idle: this server is not a standby");
}

#[test]
fn worker_stops_syncing_after_promotion() {
    let dir = TestDir::new("promotion_idle");
    let primary = dir.primary("primary");
    primary.start();
    let standby = dir.standby("standby1", &primary);
    standby.start();
    primary.poll_query_until(CONNECTIONS_FROM_WORKERS, "1");

    let offset = standby.log_offset();
    standby.promote();
    standby.wait_for_log(
        "server is no longer in recovery: sync_logical_slot stops syncing slots",
        offset,
    );
    standby.poll_query_until(WORKER_ACTIVITY, "idle: this server is not a standby");
    primary.poll_query_until(CONNECTIONS_FROM_WORKERS, "0");
}
