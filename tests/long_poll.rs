//! # The standby's worker waits on the primary for its slots to move
//!
//! ```text
//!  primary  --streaming, slot "standby1"-->  standby1 (naptime 10min)
//!    slot s1                                   worker: SELECT ..wait_for_change(..) on the primary,
//!    sync_logical_slot_wait_for_change()               returns when s1 moves
//! ```
//! With the extension in the primary's database, the worker does not poll: it
//! calls `sync_logical_slot_wait_for_change()` there, which returns as soon as
//! a selected slot moves. So a slot that moves after a quiet time is copied at
//! once, although naptime is 10 minutes; an idle primary gets one query per
//! naptime; a session's `sync_now()` cuts the wait short. Without EXECUTE on
//! the function the worker says so and polls, and takes the long poll once
//! it is granted.

mod common;
use common::*;
use std::thread::sleep;
use std::time::Duration;

/// The primary's log shows each statement with its duration and application.
const LOG_STATEMENTS: &str = "log_min_duration_statement = 0\nlog_line_prefix = '%m [%p] app=%a '";

/// Durations (ms) and timeouts (ms) of the long-poll calls the worker made, from the primary's log.
fn long_polls(log: &str) -> Vec<(f64, u64)> {
    log.lines()
        .filter(|l| l.contains("app=sync_logical_slot ") && l.contains("wait_for_change("))
        .map(|l| {
            let duration = l
                .split("duration: ")
                .nth(1)
                .and_then(|r| r.split(" ms").next())
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("no duration in {l}"));
            let timeout = l
                .rsplit(", ")
                .next()
                .and_then(|r| r.split(')').next())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no timeout in {l}"));
            (duration, timeout)
        })
        .collect()
}

/// Waits until the standby's copy of `slot` is persistent, ready, and at the
/// primary's confirmed_flush_lsn (its restart_lsn and catalog_xmin may stay
/// behind until the primary has a snapshot file for them).
fn wait_for_confirmed(standby: &Node, primary: &Node, slot: &str) {
    let target = primary.sql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    standby.poll_query_until(
        &format!(
            "SELECT NOT temporary AND confirmed_flush_lsn = '{target}' FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
        "t",
    );
    standby.poll_query_until(
        &format!("SELECT ready FROM sync_logical_slot_status WHERE slot_name = '{slot}'"),
        "t",
    );
}

fn statements_from_worker(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("app=sync_logical_slot ") && l.contains("statement: "))
        .count()
}

#[test]
fn long_poll_copies_a_move_at_once_and_idles_at_one_query_per_naptime() {
    let dir = TestDir::new("long_poll");
    let primary = dir.primary("primary");
    primary.append_conf(LOG_STATEMENTS);
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int)");
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    let standby = dir.standby("standby1", &primary);
    standby.append_conf("sync_logical_slot.naptime = '10min'");
    let offset = standby.log_offset();
    standby.start();
    standby.wait_for_log(
        "sync_logical_slot worker waits on the primary for its slots to move",
        offset,
    );
    primary.sql("INSERT INTO t VALUES (1)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_confirmed(&standby, &primary, "s1");

    // Settled: the worker sits in the long poll on the primary.
    primary.poll_query_until(
        "SELECT wait_event = 'Extension' AND query LIKE '%sync_logical_slot_wait_for_change(%'
           FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'",
        "t",
    );

    // The wait holds no snapshot on the primary: its backend has no xmin, so
    // the primary's vacuum horizon never waits for a standby's worker. A
    // transaction id handed out meanwhile would show in a snapshot's xmin.
    // The wait wakes every few milliseconds to look at the slots (then no
    // wait event shows for a moment): each round waits for a sample taken
    // inside the wait. A snapshot held by the wait would show in every one.
    for _round in 0..5 {
        primary.sql("SELECT txid_current()");
        primary.poll_query_until(
            "SELECT coalesce(backend_xmin::text, 'none') || ' ' || coalesce(backend_xid::text, 'none')
               FROM pg_stat_activity
              WHERE application_name = 'sync_logical_slot' AND wait_event = 'Extension'",
            "none none",
        );
        sleep(Duration::from_millis(200));
    }

    // A move after a quiet time: the wait under way ends at once.
    sleep(Duration::from_secs(2));
    let log_at = primary.log_offset();
    primary.sql("INSERT INTO t VALUES (2)");
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_confirmed(&standby, &primary, "s1");
    let polls = long_polls(&primary.log_since(log_at));
    let (duration, timeout) = *polls.first().unwrap_or_else(|| {
        panic!(
            "no long poll ended after the move; primary log:\n{}",
            primary.log_since(log_at)
        )
    });
    assert_eq!(
        timeout, 15_000,
        "a settled worker waits its longest (naptime, at most 15 s)"
    );
    assert!(
        duration < timeout as f64 - 1_000.0,
        "the long poll under way should have ended when s1 moved: it lasted {duration} ms of {timeout}"
    );

    // A session's request cuts the long poll short, with nothing moving: the
    // worker leaves the wait (and makes its connection anew) and runs the pass.
    let waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'sync_logical_slot' AND wait_event = 'Extension'";
    primary.poll_query_until(&format!("SELECT count(*) FROM ({waiting}) w"), "1");
    let pid = primary.sql(waiting);
    assert_eq!(
        standby.sql(
            "SELECT created || '|' || advanced || '|' || dropped FROM sync_logical_slot_sync_now()"
        ),
        "0|0|0"
    );
    // The pass ran on a new connection: the wait was left, not waited out.
    primary.poll_query_until(
        &format!(
            "SELECT count(*) = 1 AND bool_and(pid <> {pid}) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'"
        ),
        "t",
    );

    // Idle cost, with the default naptime (1 s): the worker's statements on
    // the primary over 6 quiet seconds are its long polls, one a second; no
    // pass runs when nothing moved (polling plus a pass would be two a second).
    standby.set_auto_conf("sync_logical_slot.naptime", "1s");
    standby.reload();
    sleep(Duration::from_secs(3));
    let quiet_from = primary.log_offset();
    sleep(Duration::from_secs(6));
    let quiet = primary.log_since(quiet_from);
    let statements = statements_from_worker(&quiet);
    assert!(
        (3..=8).contains(&statements),
        "expected about 6 statements from the worker in 6 idle seconds, got {statements}:\n{quiet}"
    );
    assert_eq!(
        statements,
        long_polls(&quiet).len(),
        "an idle worker should only wait, not sync:\n{quiet}"
    );
    // The copy is still vouched for: last_sync_at moves on without passes.
    standby.poll_query_until(
        "SELECT ready AND last_sync_at > now() - interval '3 s' FROM sync_logical_slot_status WHERE slot_name = 's1'",
        "t",
    );

    // The primary restarts under a waiting worker: it connects anew and waits
    // again (a broken wait is a lost connection, not a reason to poll).
    let offset = standby.log_offset();
    primary.restart();
    standby.wait_for_log(
        "sync_logical_slot worker connected to the primary server",
        offset,
    );
    primary.poll_query_until(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot' AND wait_event = 'Extension'",
        "1",
    );
    primary.sql("INSERT INTO t VALUES (4)");
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_confirmed(&standby, &primary, "s1");
    let log = standby.log_since(offset);
    assert_eq!(count(&log, "wait on the primary failed"), 0, "{log}");
    assert_eq!(count(&log, "polls the primary"), 0, "{log}");
}

#[test]
fn long_poll_without_execute_falls_back_to_polling_and_says_why() {
    let dir = TestDir::new("long_poll_fallback");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql(
        "CREATE ROLE slot_sync LOGIN REPLICATION;
         GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean),
                                   pg_stat_file(text, boolean) TO slot_sync",
    );
    primary.sql("CREATE TABLE t (id int)");
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    let standby = dir.standby("standby1", &primary);
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} user=slot_sync dbname=postgres'",
        primary.port
    ));
    let offset = standby.log_offset();
    standby.start();
    standby.wait_for_log(
        "polls the primary every 200 ms at most: the worker's role may not execute sync_logical_slot_wait_for_change on the primary",
        offset,
    );
    // Polling still syncs.
    primary.sql("INSERT INTO t VALUES (1)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_confirmed(&standby, &primary, "s1");
    assert_eq!(
        primary.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot' AND query LIKE '%wait_for_change%'"
        ),
        "0"
    );

    // Granted: the worker looks again (every 30 s) and takes the long poll,
    // on the same connection.
    primary.sql(
        "GRANT EXECUTE ON FUNCTION sync_logical_slot_wait_for_change(text, text, bigint, integer) TO slot_sync",
    );
    let offset = standby.log_offset();
    standby.wait_for_log(
        "sync_logical_slot worker waits on the primary for its slots to move",
        offset,
    );
    assert_eq!(
        count(
            &standby.log_since(offset),
            "sync_logical_slot worker connected to the primary server"
        ),
        0
    );

    // A primary that no longer preloads the library (its function could not
    // load there): the worker says so and polls, and still syncs.
    let offset = standby.log_offset();
    primary.append_conf("shared_preload_libraries = ''");
    primary.restart();
    standby.wait_for_log(
        "polls the primary every 200 ms at most: calling sync_logical_slot_wait_for_change on the primary fails",
        offset,
    );
    assert!(
        standby
            .log_since(offset)
            .contains("must be loaded via shared_preload_libraries"),
        "{}",
        standby.log_since(offset)
    );
    primary.sql("INSERT INTO t VALUES (2)");
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_confirmed(&standby, &primary, "s1");
    let log = standby.log_since(offset);
    assert_eq!(count(&log, "wait on the primary failed"), 0, "{log}");
}
