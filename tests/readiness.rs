//! # Readiness an HA manager can trust (docs/design.md, "Readiness")
//!
//! ```text
//!  primary  --streaming, slot "standby1"-->  standby1
//!    s1, s2 (test_decoding)                    copies, ready; a record on disk each
//! ```
//! - A standby restarted while its primary is down answers from the records
//!   kept with its copies: ready, marked `disk`, with the verdict's age; a
//!   copy without a record is not ready, and a promotion still decodes.
//! - A verdict withdrawn (the worker stopped syncing) does not come back
//!   from disk after a restart.
//! - A running standby keeps its verdicts when its primary stops or
//!   crashes; a pass that fails, or a connection refused, while the primary
//!   answers withdraws them (and their records).
//! - A slot not ready before a restart (its copy was temporary) is not ready
//!   after it.
//! - Per slot and by policy: `ready(slots)`, `ready_ignores_idle_slots`.
//! - pg_monitor reads readiness; only a superuser changes slots.

mod common;
use std::path::PathBuf;

use common::*;

fn record(node: &Node, slot: &str) -> PathBuf {
    node.datadir()
        .join("pg_replslot")
        .join(slot)
        .join("sync_logical_slot.verdict")
}

/// A ready copy of s1, synced by the least-privilege role `slot_sync`.
fn ready_copy_synced_by_slot_sync(dir: &TestDir) -> (Node, Node) {
    let (primary, standby) = primary_and_standby(dir);
    create_worker_role(&primary);
    standby.wait_for_catchup(&primary);
    connect_worker_as_slot_sync(&standby, &primary);
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    wait_for_copy(&standby, &primary, "s1");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
    (primary, standby)
}

fn two_ready_copies(dir: &TestDir) -> (Node, Node) {
    let (primary, standby) = primary_and_standby(dir);
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('s2', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (1, 'one')");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)");
    wait_for_copy(&standby, &primary, "s1");
    wait_for_copy(&standby, &primary, "s2");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
    (primary, standby)
}

/// The worker's line when it cannot reach the primary (not the walreceiver's).
const WORKER_CANNOT_CONNECT: &str =
    "sync_logical_slot worker LOG:  could not connect to the primary server";

#[test]
fn a_standby_restarted_with_its_primary_down_is_ready_from_disk() {
    let dir = TestDir::new("readiness_disk");
    let (primary, standby) = two_ready_copies(&dir);
    assert_eq!(
        standby.sql("SELECT string_agg(verdict_source, ',' ORDER BY slot_name) FROM sync_logical_slot_status"),
        "pass,pass"
    );
    for s in ["s1", "s2"] {
        let text = std::fs::read_to_string(record(&standby, s))
            .unwrap_or_else(|e| panic!("no verdict record for ready copy {s}: {e}"));
        assert!(text.ends_with("end\n"), "a torn record for {s}: {text}");
    }

    // The primary stops (a clean shutdown, as in a switchover), then
    // crashes: a running standby keeps the verdicts of its last pass.
    for crash in [false, true] {
        let offset = standby.log_offset();
        if crash {
            primary.kill9();
        } else {
            primary.stop();
        }
        standby.wait_for_log(WORKER_CANNOT_CONNECT, offset);
        assert_eq!(
            standby.sql("SELECT ready || '|' || verdict_source FROM sync_logical_slot_readiness()"),
            "true|pass",
            "a primary that went away must not withdraw the verdicts (crash: {crash})"
        );
        if !crash {
            primary.start();
            standby.poll_query_until(
                "SELECT verdict_age < '5s' FROM sync_logical_slot_readiness()",
                "t",
            );
        }
    }
    let after_kill = standby.sql("SELECT clock_timestamp()");

    standby.restart();
    // No pass can reach the primary: the verdicts come from disk.
    standby.poll_query_until(
        "SELECT ready || '|' || verdict_source FROM sync_logical_slot_readiness()",
        "true|disk",
    );
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "t");
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_wait_ready('1s')"),
        "t"
    );
    assert_eq!(
        standby.sql(
            "SELECT string_agg(slot_name || ':' || state || ':' || ready || ':' || verdict_source, ',' ORDER BY slot_name)
               FROM sync_logical_slot_status"
        ),
        "s1:synced:true:disk,s2:synced:true:disk"
    );
    assert_eq!(
        standby.sql(&format!(
            "SELECT verified_at <= '{after_kill}' AND verdict_age > '0'
               FROM sync_logical_slot_readiness()"
        )),
        "t",
        "the verdict from disk must be as old as the last pass before the primary went"
    );

    // The primary back: passes take over from the records.
    primary.start();
    standby.poll_query_until(
        "SELECT ready || '|' || verdict_source FROM sync_logical_slot_readiness()",
        "true|pass",
    );
    primary.kill9();

    // A copy whose record is gone is not ready; the others still are.
    std::fs::remove_file(record(&standby, "s2")).expect("remove s2's record");
    standby.restart();
    standby.poll_query_until(
        "SELECT ready || '|' || verdict_source FROM sync_logical_slot_readiness()",
        "false|disk",
    );
    assert_eq!(
        standby.sql("SELECT not_ready FROM sync_logical_slot_readiness()"),
        "{s2}"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['s1'])"),
        "t"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['s1', 's2'])"),
        "f"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['nosuch'])"),
        "f"
    );
    assert_eq!(
        standby.sql("SELECT state || '|' || last_error FROM sync_logical_slot_status WHERE slot_name = 's2'"),
        "error|no ready verdict is kept on disk for this copy"
    );

    // Promoted on that verdict: s1 decodes what is written next.
    standby.promote();
    standby.sql("INSERT INTO t VALUES (2, 'two')");
    let changes = standby
        .sql("SELECT string_agg(data, ' ') FROM pg_logical_slot_get_changes('s1', NULL, NULL)");
    assert_eq!(
        inserted_ids(&changes),
        vec![2],
        "decoded from s1: {changes}"
    );
    // A primary keeps no verdicts: the worker removes them once it sees the
    // promotion.
    let deadline = std::time::Instant::now() + DEADLINE;
    while record(&standby, "s1").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the promoted server still has s1's verdict record\n{}",
            standby.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_copy_not_ready_before_a_restart_is_not_ready_after_it() {
    let dir = TestDir::new("readiness_temporary");
    let (primary, standby) = lagging_and_active(&dir);
    assert_eq!(
        standby.sql("SELECT not_ready FROM sync_logical_slot_readiness()"),
        "{lagging}"
    );
    primary.kill9();
    standby.restart();
    // lagging's copy was temporary: gone with the restart, yet still selected.
    standby.poll_query_until(
        "SELECT ready || '|' || verdict_source || '|' || not_ready::text FROM sync_logical_slot_readiness()",
        "false|disk|{lagging}",
    );
    assert_eq!(
        standby.sql("SELECT last_error FROM sync_logical_slot_status WHERE slot_name = 'lagging'"),
        "no copy of this slot survived the restart (it was not persistent yet)"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['active'])"),
        "t"
    );
}

#[test]
fn a_primary_refusing_the_worker_withdraws_the_verdicts() {
    let dir = TestDir::new("readiness_refused");
    let (primary, standby) = ready_copy_synced_by_slot_sync(&dir);

    // The role may no longer log in; its open connection is ended.
    primary.sql("ALTER ROLE slot_sync NOLOGIN");
    primary
        .sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'slot_sync'");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "f");
    let why = standby.sql("SELECT last_error FROM sync_logical_slot_status WHERE slot_name = 's1'");
    assert!(
        why.starts_with("not kept current: the primary server is up but the worker cannot sync")
            && why.contains("not permitted to log in"),
        "{why}"
    );
    assert!(!record(&standby, "s1").exists());

    primary.sql("ALTER ROLE slot_sync LOGIN");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
}

#[test]
fn a_withdrawn_verdict_does_not_come_back_from_disk() {
    let dir = TestDir::new("readiness_withdrawn");
    let (primary, standby) = two_ready_copies(&dir);
    assert!(record(&standby, "s1").exists());

    standby.sql("ALTER SYSTEM SET hot_standby_feedback = off");
    standby.reload();
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "f");
    assert!(
        !record(&standby, "s1").exists(),
        "a withdrawn verdict left its record on disk"
    );

    // Put right while the primary is down: nothing was verified since.
    standby.sql("ALTER SYSTEM SET hot_standby_feedback = on");
    primary.kill9();
    let offset = standby.log_offset();
    standby.restart();
    // The worker read the disk before it tried the primary.
    standby.wait_for_log(WORKER_CANNOT_CONNECT, offset);
    assert_eq!(
        standby.sql(
            "SELECT ready || '|' || coalesce(verdict_source, 'none') || '|' || detail
               FROM sync_logical_slot_readiness()"
        ),
        "false|none|no verdict yet: the worker has not completed a sync pass since it started, and no verdict of a pass before is kept on disk"
    );
}

#[test]
fn a_pass_failing_while_the_primary_is_up_withdraws_the_verdicts() {
    let dir = TestDir::new("readiness_pass_fails");
    let (primary, standby) = ready_copy_synced_by_slot_sync(&dir);

    // The worker's role can no longer read the primary's slots; the primary
    // answers everything else.
    primary.sql("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_get_replication_slots() FROM PUBLIC");
    let _ = standby.try_sql("SELECT sync_logical_slot_sync_now()");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "f");
    let why = standby.sql("SELECT last_error FROM sync_logical_slot_status WHERE slot_name = 's1'");
    assert!(
        why.starts_with("not kept current: the primary server is up but the worker cannot sync"),
        "{why}"
    );
    assert!(!record(&standby, "s1").exists());

    primary.sql("GRANT EXECUTE ON FUNCTION pg_catalog.pg_get_replication_slots() TO PUBLIC");
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
    assert!(record(&standby, "s1").exists());
}

#[test]
fn an_idle_slot_is_left_out_only_by_policy_and_never_when_named() {
    let dir = TestDir::new("readiness_idle");
    let (_primary, standby) = lagging_and_active(&dir);
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "f");
    assert_eq!(
        standby.sql("SELECT not_ready FROM sync_logical_slot_readiness()"),
        "{lagging}"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['active'])"),
        "t"
    );
    // lagging has no consumer and has not moved: idle, waiting_for_remote,
    // and its lag is no figure (its positions are the standby's reservation).
    assert_eq!(
        standby.sql("SELECT state || '|' || (lag_bytes IS NULL) FROM sync_logical_slot_status WHERE slot_name = 'lagging'"),
        "waiting_for_remote|true"
    );

    standby.sql("ALTER SYSTEM SET sync_logical_slot.ready_ignores_idle_slots = on");
    standby.reload();
    standby.poll_query_until("SELECT sync_logical_slot_ready()", "t");
    let detail = standby.sql("SELECT detail FROM sync_logical_slot_readiness()");
    assert!(
        detail.contains("1 idle slot(s) left out"),
        "the answer must say what it left out: {detail}"
    );
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_ready(ARRAY['lagging'])"),
        "f",
        "a slot named is never left out"
    );
    assert!(standby
        .try_sql("SELECT sync_logical_slot_ready(ARRAY[NULL])")
        .unwrap_err()
        .contains("slots must not contain NULL"));
    assert!(standby
        .try_sql("SELECT sync_logical_slot_ready(ARRAY[]::text[])")
        .unwrap_err()
        .contains("slots must name at least one slot"));
}

#[test]
fn pg_monitor_reads_readiness_and_only_a_superuser_changes_slots() {
    let dir = TestDir::new("readiness_grants");
    let (primary, standby) = two_ready_copies(&dir);
    primary.sql("CREATE ROLE mon LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN");
    standby.wait_for_catchup(&primary);
    let as_role = |role: &str, sql: &str| standby.try_sql(&format!("SET ROLE {role}; {sql}"));
    assert_eq!(
        as_role(
            "mon",
            "SELECT count(*) FROM sync_logical_slot_status WHERE ready"
        )
        .unwrap(),
        "2"
    );
    assert_eq!(
        as_role("mon", "SELECT sync_logical_slot_ready()").unwrap(),
        "t"
    );
    assert_eq!(
        as_role(
            "mon",
            "SELECT sync_logical_slot_wait_ready('1s', ARRAY['s1'])"
        )
        .unwrap(),
        "t"
    );
    assert_eq!(
        as_role("mon", "SELECT ready FROM sync_logical_slot_readiness()").unwrap(),
        "t"
    );
    for change in [
        "SELECT sync_logical_slot_sync_now()",
        "SELECT sync_logical_slot_sync_slot('s1')",
        "SELECT sync_logical_slot_advance('s1', '0/0')",
    ] {
        let e = as_role("mon", change).unwrap_err();
        assert!(
            e.contains("permission denied"),
            "{change} as pg_monitor: {e}"
        );
    }
    for read in [
        "SELECT sync_logical_slot_ready()",
        "SELECT count(*) FROM sync_logical_slot_status",
    ] {
        let e = as_role("nobody", read).unwrap_err();
        assert!(
            e.contains("permission denied"),
            "{read} as a plain role: {e}"
        );
    }
}
