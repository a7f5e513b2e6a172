//! # A standby without hot_standby_feedback or primary_slot_name says so once, stays up, and waits
//!
//! ```text
//!  primary  --streaming-->  standby1 (hot_standby_feedback=off)
//!                             worker: one LOG line naming the setting, no connection to the primary
//!                           then hot_standby_feedback=on + reload: the worker starts
//! ```

mod common;
use common::*;

const MISSING_FEEDBACK: &str =
    "sync_logical_slot cannot sync slots: hot_standby_feedback is off on this standby";

#[test]
fn missing_hot_standby_feedback_is_reported_once_and_fixed_by_reload() {
    let dir = TestDir::new("prerequisites");
    let primary = dir.primary("primary");
    primary.start();
    let standby = dir.standby("standby1", &primary);
    standby.append_conf("hot_standby_feedback = off");
    standby.start();

    let after = standby.wait_for_log(MISSING_FEEDBACK, 0);
    assert!(
        standby
            .log_since(0)
            .contains("HINT:  Set hot_standby_feedback = on"),
        "the line should say what to do:\n{}",
        standby.log_tail()
    );
    // Several naptimes (200 ms) later: still one line, the worker alive and not restarted,
    // the server up, and no connection to the primary.
    let pid = standby.worker_pid();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        count(&standby.log_since(0), MISSING_FEEDBACK),
        1,
        "{}",
        standby.log_tail()
    );
    assert_eq!(
        standby.worker_pid(),
        pid,
        "the worker should wait, not exit and restart"
    );
    assert_eq!(primary.sql(CONNECTIONS_FROM_WORKERS), "0");
    assert!(standby
        .log_since(after)
        .find("sync_logical_slot worker connected")
        .is_none());

    // Fixed and reloaded: the worker starts syncing without a restart.
    standby.sql("ALTER SYSTEM SET hot_standby_feedback = on");
    standby.reload();
    standby.wait_for_log(
        "sync_logical_slot prerequisites are met: slot sync starts",
        after,
    );
    primary.poll_query_until(CONNECTIONS_FROM_WORKERS, "1");
}

#[test]
fn missing_primary_slot_name_is_reported() {
    let dir = TestDir::new("prereq_slot");
    let primary = dir.primary("primary");
    primary.start();
    let standby = dir.standby("standby1", &primary);
    standby.set_auto_conf("primary_slot_name", "");
    standby.start();
    standby.wait_for_log(
        "sync_logical_slot cannot sync slots: primary_slot_name is not set on this standby",
        0,
    );
    assert!(standby.is_running());
    assert_eq!(primary.sql(CONNECTIONS_FROM_WORKERS), "0");
}

/// primary_slot_name names a slot the primary lacks (so the standby does not
/// even stream): one WARNING saying how to create it, the copy is not ready;
/// once the slot exists, the copy becomes ready.
#[test]
fn missing_physical_slot_on_the_primary_is_reported_and_copies_wait() {
    let dir = TestDir::new("prerequisites_physical");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    let standby = dir.standby("standby1", &primary);
    standby.set_auto_conf("primary_slot_name", "standby_nope");
    standby.start();

    primary.sql("SELECT pg_create_logical_replication_slot('s', 'test_decoding')");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s', NULL, NULL)");
    standby.wait_for_log(
        "WARNING:  replication slot \"standby_nope\" does not exist on the primary server",
        0,
    );
    assert!(standby
        .log_since(0)
        .contains("HINT:  Create it on the primary: SELECT pg_create_physical_replication_slot('standby_nope');"));
    standby.poll_query_until(
        "SELECT ready FROM sync_logical_slot_status WHERE slot_name = 's'",
        "f",
    );

    primary.sql("SELECT pg_create_physical_replication_slot('standby_nope')");
    wait_for_copy(&standby, &primary, "s");
    assert_eq!(
        count(
            &standby.log_since(0),
            "\"standby_nope\" does not exist on the primary server"
        ),
        1,
        "warned once, not every pass"
    );
}

/// A copy that was ready is no longer ready once the worker stops keeping it
/// current (hot_standby_feedback turned off), also while the primary is up
/// and its slot moves on; ready again once the setting is back.
#[test]
fn a_ready_copy_is_not_ready_once_the_worker_stops_syncing() {
    let dir = TestDir::new("prereq_stale");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    let standby = dir.standby("standby1", &primary);
    standby.start();
    // Made after the base backup: the copy's reservation (the standby's
    // restartpoint) is behind it, so the copy is ready at once.
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    wait_for_copy(&standby, &primary, "s1");
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "t");

    let offset = standby.log_offset();
    standby.sql("ALTER SYSTEM SET hot_standby_feedback = off");
    standby.reload();
    standby.wait_for_log(MISSING_FEEDBACK, offset);
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "f");
    assert_eq!(
        standby.sql("SELECT state || '|' || ready || '|' || last_error FROM sync_logical_slot_status"),
        "error|false|not kept current: hot_standby_feedback is off on this standby, so the worker stopped syncing"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_wait_ready('200ms')"),
        "f"
    );

    standby.sql("ALTER SYSTEM SET hot_standby_feedback = on");
    standby.reload();
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
}
