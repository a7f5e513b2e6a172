//! # The operator interface on a real pair: set-up from the primary, readiness, passes on demand, advance
//!
//! ```text
//!  primary: role slot_sync (password only, scram), failover_logical_slot_init(...)
//!           → foreign server master_fdw + user mapping, replicated          ──▶ standby1
//!                                                                              sync_logical_slot.master_fdw = 'master_fdw'
//!                                                                              naptime 1h (back-off up to an hour)
//! ```
//! The standby's own primary_conninfo has no password; the worker connects as
//! slot_sync with the password from the replicated user mapping. The password
//! appears in no log, even when the set-up call fails. sync_logical_slot_ready()
//! is false while a copy waits and true once it is ready; sync_now, sync_slot
//! and advance work on the standby.

mod common;
use common::*;

const PASSWORD: &str = "Sync-Pw-77";

#[test]
fn set_up_from_the_primary_then_ready_sync_now_sync_slot_advance() {
    let dir = TestDir::new("operator_interface");
    let primary = dir.primary("primary");
    // The worker's role may only log in with its password.
    let hba = primary.datadir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all slot_sync 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql(&format!(
        "CREATE ROLE slot_sync LOGIN REPLICATION PASSWORD '{PASSWORD}'"
    ));
    // Least privilege: the extension's snapshot reader, not pg_read_binary_file.
    primary.sql("GRANT EXECUTE ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn), sync_logical_slot_read_slot_state(name) TO slot_sync");
    primary.sql("SET ROLE slot_sync; SELECT 1");
    let denied =
        primary.try_sql("SET ROLE slot_sync; SELECT pg_read_binary_file('global/pg_control')");
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "the worker's role can read the primary's files: {denied:?}"
    );
    let other =
        primary.try_sql("SET ROLE slot_sync; SELECT sync_logical_slot_read_snapshot('0/1')");
    assert_eq!(other.as_deref(), Ok(""), "no snapshot at 0/1: NULL");

    // A refused call does not leak the password into the log.
    let bad = primary.try_sql(&format!(
        "SELECT * FROM failover_logical_slot_init('127.0.0.1', 'not-a-port', 'postgres', 'slot_sync', '{PASSWORD}')"
    ));
    assert!(bad.unwrap_err().contains("invalid port"));
    let lines = primary.sql(&format!(
        "SELECT * FROM failover_logical_slot_init('127.0.0.1', '{}', 'postgres', 'slot_sync', '{PASSWORD}')",
        primary.port
    ));
    // Every line a standby needs (settings; a comment where the value is the
    // DBA's), appended below as they are.
    let settings: Vec<&str> = lines
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        settings,
        [
            "shared_preload_libraries = 'sync_logical_slot'",
            "wal_level = logical",
            "hot_standby_feedback = on",
            "sync_logical_slot.database = 'postgres'",
            "sync_logical_slot.master_fdw = 'master_fdw'",
            "sync_logical_slot.standby_slot_names = ''",
        ]
    );
    assert!(lines.contains("\n#primary_slot_name = "), "{lines}");
    // A slot created before the standby exists: its WAL start is not on the
    // standby, so its copy waits until the slot moves on.
    primary.sql("CREATE TABLE t (id int)");
    primary.sql("SELECT pg_create_logical_replication_slot('early', 'test_decoding')");

    let standby = dir.standby("standby1", &primary);
    assert!(
        !std::fs::read_to_string(standby.datadir().join("postgresql.auto.conf"))
            .unwrap()
            .contains("password")
    );
    standby.append_conf(&lines);
    standby.append_conf("sync_logical_slot.naptime = '1h'");
    standby.start();
    primary.poll_query_until(
        "SELECT usename FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'",
        "slot_sync",
    );

    // Not ready while early's copy waits.
    standby.poll_query_until(&status_of("early"), "waiting_for_remote");
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "f");
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_wait_ready('300ms')"),
        "f"
    );

    // early moves on; a pass on demand (the worker would sleep an hour).
    for _ in 0..2 {
        primary.sql("INSERT INTO t VALUES (1)");
        primary.sql("CHECKPOINT");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('early', NULL, NULL)");
    }
    standby.wait_for_catchup(&primary);
    // One pass now (the worker may have seen some of it on its own already).
    let counts =
        standby.sql("SELECT created + advanced + dropped >= 0 FROM sync_logical_slot_sync_now()");
    assert_eq!(counts, "t", "sync_now returns its pass's counts");
    assert_eq!(
        standby.sql("SELECT NOT temporary FROM pg_replication_slots WHERE slot_name = 'early'"),
        "t",
        "after a pass, the copy of a slot past the reservation is persistent"
    );
    standby.poll_query_until("SELECT sync_logical_slot_sync_slot('early')", "synced");
    assert_eq!(standby.sql("SELECT sync_logical_slot_ready()"), "t");
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_wait_ready('5s')"),
        "t"
    );

    // A new slot: created by the next pass on demand, and named errors for the rest.
    primary.sql("SELECT pg_create_logical_replication_slot('fresh', 'test_decoding')");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('fresh', NULL, NULL)");
    standby.wait_for_catchup(&primary);
    // After the pass on demand returns, the copy exists (made by it, or by the worker just before).
    standby.sql("SELECT * FROM sync_logical_slot_sync_now()");
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fresh'"),
        "1"
    );
    standby.poll_query_until("SELECT sync_logical_slot_sync_slot('fresh')", "synced");
    let err = standby
        .try_sql("SELECT sync_logical_slot_sync_slot('nope')")
        .unwrap_err();
    assert!(
        err.contains("the primary server has no logical slot \"nope\""),
        "{err}"
    );

    // advance: to the consumer's position on the primary, which the copy has not been told of.
    primary.sql("INSERT INTO t VALUES (2)");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('fresh', NULL, NULL)");
    let consumer = primary
        .sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'fresh'");
    standby.wait_for_catchup(&primary);
    assert_eq!(
        standby.sql(&format!(
            "SELECT sync_logical_slot_advance('fresh', '{consumer}')"
        )),
        consumer
    );
    assert_eq!(
        standby
            .sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'fresh'"),
        consumer
    );
    // Never backwards, never past the flushed WAL.
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_advance('fresh', '0/1')"),
        consumer
    );
    assert_eq!(
        standby.sql(
            "SELECT sync_logical_slot_advance('fresh', 'FFFFFFFF/0') <= pg_last_wal_receive_lsn()"
        ),
        "t"
    );

    // A logical slot's state file, as the primary serves it: its magic number first.
    assert_eq!(
        primary.sql("SELECT substr(sync_logical_slot_read_slot_state('early'), 1, 4) = '\\xa11c0501'::bytea"),
        "t"
    );
    // Snapshots were read through the extension, not the deprecated way.
    assert!(!standby
        .log_since(0)
        .contains("pg_read_binary_file, which is deprecated"));

    // The deprecated grant still works for this release, and says so once.
    let offset = standby.log_offset();
    primary
        .sql("REVOKE EXECUTE ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn) FROM slot_sync");
    primary.sql("GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean), pg_stat_file(text, boolean) TO slot_sync");
    primary.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'");
    standby.wait_for_log(
        "reads the primary's decoding snapshots with pg_read_binary_file, which is deprecated",
        offset,
    );
    primary.sql("SELECT pg_create_logical_replication_slot('legacy', 'test_decoding')");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('legacy', NULL, NULL)");
    standby.wait_for_catchup(&primary);
    standby.poll_query_until("SELECT sync_logical_slot_sync_slot('legacy')", "synced");

    for node in [&primary, &standby] {
        assert!(
            !node.log_since(0).contains(PASSWORD),
            "the password is in the log of {}",
            node.name
        );
    }
    assert_eq!(
        standby
            .sql("SELECT count(*) FROM sync_logical_slot_status WHERE last_error LIKE '%Sync-Pw%'"),
        "0"
    );
}
