//! # PostgreSQL 16: decoding on a standby, and what it changes for the copies
//!
//! ```text
//!  primary                               --streaming, slot "standby1"-->  standby1 (16: can decode)
//!    s1, s2 ... (consumed here)                                            copies of s1, s2 ...
//!                                                                          standby_own, clash: its own slots
//! ```
//! - A consumer on the standby never uses a copy: pg_recvlogical, the SQL
//!   decoding functions and pg_replication_slot_advance are refused (55000),
//!   whether the name is a constant or a parameter (bound, prepared, or a
//!   PL/pgSQL variable), and the copy does not move.
//! - The standby's own slots (made there by a consumer) are consumable there,
//!   and no sync pass moves, drops or reports them, also when the primary has
//!   a slot of the same name.
//! - A copy invalidated by the standby itself (a recovery conflict,
//!   rows_removed) is dropped and copied afresh; the status view says why
//!   until the new copy is synced, and the other slots sync meanwhile.
//! - A copy that waits (a temporary slot, held by the worker) and conflicts
//!   with a catalog prune replayed on the standby is given up when the
//!   startup process asks for it: replay goes on, the copy is made again and
//!   becomes synced, and the standby can be promoted.
//! - `sync_logical_slot.log_standby_snapshot`: only when on does the worker
//!   ask the primary for a running-xacts record for a waiting copy; without
//!   EXECUTE on pg_log_standby_snapshot() it warns, with a hint.
//!
//! On PostgreSQL 15 none of this applies: each test says so in one line and returns.

mod common;
use common::*;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const REFUSED: &str =
    "is a failover copy kept by sync_logical_slot and cannot be used on a standby";

/// True (after one line saying why) when the server under test is older than 16.
fn skipped_before_16(why: &str) -> bool {
    let major = pg_major();
    if major < 16 {
        println!("skipped on PostgreSQL {major}: {why}");
        return true;
    }
    false
}

/// A slot's positions and state: restart_lsn|confirmed_flush_lsn|catalog_xmin|temporary|active.
fn slot_row(node: &Node, slot: &str) -> String {
    node.sql(&format!(
        "SELECT concat_ws('|', restart_lsn, confirmed_flush_lsn, catalog_xmin, temporary, active)
           FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
}

/// Brings the standby's copy of `slot` (of database `db`) to where the
/// primary's slot stands, ready. A new copy reserves WAL from the standby's
/// last restartpoint: when the primary's slot restarts before that, the copy
/// becomes persistent once that slot has decoded a running-xacts record
/// logged after it and confirmed past it. So: log one, consume, until the
/// copy is persistent.
fn settle_copy(primary: &Node, standby: &Node, db: &str, slot: &str) {
    settle_copy_consuming(
        primary,
        standby,
        db,
        slot,
        &format!("SELECT count(*) FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"),
    );
}

/// As `settle_copy`, the primary's slot consumed with `consume`.
fn settle_copy_consuming(primary: &Node, standby: &Node, db: &str, slot: &str, consume: &str) {
    let persistent =
        format!("SELECT NOT temporary FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let deadline = Instant::now() + DEADLINE;
    loop {
        primary.sql("SELECT pg_log_standby_snapshot()");
        primary.sql_in(db, consume);
        standby.wait_for_catchup(primary);
        sleep(Duration::from_millis(300));
        if standby.try_sql(&persistent).as_deref() == Ok("t") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy of {slot} never became persistent; status: {:?}\n--- log of {} ---\n{}",
            standby.try_sql("SELECT * FROM sync_logical_slot_status"),
            standby.name,
            standby.log_tail()
        );
    }
    wait_for_copy(standby, primary, slot);
}

/// Creates logical slot `name` (test_decoding) on the standby itself. There,
/// creation waits for a running-xacts record from the primary: one is asked
/// for, again and again, until the creation returns.
fn create_on_standby(primary: &Node, standby: &Node, name: &str) {
    let creating = sql_in_thread(
        standby.port,
        &format!("SELECT pg_create_logical_replication_slot('{name}', 'test_decoding')"),
    );
    let deadline = Instant::now() + DEADLINE;
    while !creating.is_finished() {
        assert!(
            Instant::now() < deadline,
            "creating slot {name} on the standby did not finish\n{}",
            standby.log_tail()
        );
        primary.sql("SELECT pg_log_standby_snapshot()");
        sleep(Duration::from_millis(200));
    }
    let created = creating.join().unwrap();
    assert!(
        created.is_ok(),
        "creating {name} on the standby: {created:?}"
    );
}

/// Runs a psql script (SQL and backslash commands) in database postgres on
/// `node` with verbose errors (SQLSTATE shown): Ok(stdout) or Err(stderr).
fn psql_script(node: &Node, script: &str) -> Result<String, String> {
    let out = psql_stdin(node, &["-v", "VERBOSITY=verbose"], script);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
    }
}

/// Runs `cmd` to its end, killed (and the test failed) if it outlives the deadline.
fn output_within_deadline(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let pid = child.id().to_string();
            let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
            let _ = child.kill();
            panic!("{what} still running after {DEADLINE:?}");
        }
        sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("wait")
}

fn sync_passes(standby: &Node, n: usize) {
    for _ in 0..n {
        standby.sql("SELECT * FROM sync_logical_slot_sync_now()");
    }
}

/// These tests need copies that wait for the primary's slot to pass the
/// standby's restartpoint. The standby keeps its WAL (wal_keep_size), so a
/// new copy would reserve from the primary's restart_lsn instead and not
/// wait; with max_slot_wal_keep_size set it never does (docs/design.md,
/// invariant 2), and the wait is what PostgreSQL 17 would do.
const KEEP_RESERVING_AT_THE_RESTARTPOINT: &str = "max_slot_wal_keep_size = '10GB'";

/// A primary that vacuums only when the test says so and keeps the WAL a
/// standby misses while it is away, with table `table` and database `app`,
/// and its running standby (copying `slot_names` when given).
fn vacuum_ready_cluster(dir: &TestDir, table: &str, slot_names: Option<&str>) -> (Node, Node) {
    let primary = dir.primary("primary");
    primary.append_conf("autovacuum = off\nwal_keep_size = '1GB'");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql(&format!("CREATE TABLE {table}"));
    primary.sql("CREATE DATABASE app");
    let standby = dir.standby("standby1", &primary);
    if let Some(names) = slot_names {
        standby.set_auto_conf("sync_logical_slot.slot_names", names);
    }
    standby.append_conf(KEEP_RESERVING_AT_THE_RESTARTPOINT);
    standby.start();
    (primary, standby)
}

/// A consumer on the standby is refused a copy, however it names it; the
/// copy stays where the primary's consumer left it, synced.
#[test]
fn a_copy_is_refused_to_consumers_on_the_standby() {
    if skipped_before_16("logical decoding on a standby is new in 16") {
        return;
    }
    let dir = TestDir::new("standby_decoding_refused");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let standby = dir.standby("standby1", &primary);
    // The SQLSTATE of every message, also the walsender's.
    standby.append_conf("log_line_prefix = '%m [%p] %b %e '");
    standby.start();

    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (1, 'consumed')");
    settle_copy(&primary, &standby, "postgres", "s1");
    // A change not consumed yet: decoding the copy would return it.
    primary.sql("INSERT INTO t VALUES (2, 'not consumed')");
    standby.wait_for_catchup(&primary);
    let copy_before = slot_row(&standby, "s1");
    let primary_before = slot_row(&primary, "s1");

    // Streaming replication: refused before the first message.
    let offset = standby.log_offset();
    let endpos = standby.sql("SELECT pg_last_wal_replay_lsn()");
    let file = dir.path.join("s1-on-standby.out");
    let mut recv = recvlogical_command(&standby, "s1", &file);
    recv.args(["-E", &endpos]);
    let out = output_within_deadline(recv, "pg_recvlogical on the standby's copy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("replication slot \"s1\" {REFUSED}")),
        "pg_recvlogical on the copy: {}\n{stderr}",
        out.status
    );
    assert!(
        inserted_ids(&std::fs::read_to_string(&file).unwrap_or_default()).is_empty(),
        "pg_recvlogical received changes from the copy"
    );
    standby.wait_for_log(
        &format!("walsender 55000 ERROR:  replication slot \"s1\" {REFUSED}"),
        offset,
    );

    // SQL, the slot named by a constant: every function that moves or reads a slot.
    let refused = format!("ERROR:  55000: replication slot \"s1\" {REFUSED}");
    for sql in [
        "SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)",
        "SELECT count(*) FROM pg_logical_slot_peek_changes('s1', NULL, NULL)",
        "SELECT count(*) FROM pg_logical_slot_get_binary_changes('s1', NULL, NULL)",
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s1', NULL, NULL)",
        "SELECT pg_logical_slot_get_changes('s1', NULL, NULL)",
        "SELECT pg_replication_slot_advance('s1', pg_last_wal_replay_lsn())",
        "SELECT * FROM pg_replication_slot_advance('s1', pg_last_wal_replay_lsn())",
        // Prepared: a custom plan (the name a constant), then a generic one (a parameter).
        "PREPARE p(name) AS SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL);
         EXECUTE p('s1');",
        "SET plan_cache_mode = force_generic_plan;
         PREPARE p(name) AS SELECT count(*) FROM pg_logical_slot_get_changes($1, NULL, NULL);
         EXECUTE p('s1');",
        "SET plan_cache_mode = force_generic_plan;
         PREPARE a(name) AS SELECT pg_replication_slot_advance($1, pg_last_wal_replay_lsn());
         EXECUTE a('s1');",
        // A PL/pgSQL variable: in a generic plan, a parameter its hook gives.
        "DO $$
         DECLARE n name := 's1'; c bigint;
         BEGIN
           SET LOCAL plan_cache_mode = force_generic_plan;
           SELECT count(*) INTO c FROM pg_logical_slot_get_changes(n, NULL, NULL);
         END $$;",
        // A text or varchar value, cast to name: a constant, a PL/pgSQL
        // variable in a generic plan, a bound parameter (as JDBC binds strings).
        "SELECT count(*) FROM pg_logical_slot_get_changes('s1'::text::name, NULL, NULL)",
        "DO $$
         DECLARE n text := 's1'; c bigint;
         BEGIN
           SET LOCAL plan_cache_mode = force_generic_plan;
           SELECT count(*) INTO c FROM pg_logical_slot_get_changes(n::name, NULL, NULL);
         END $$;",
        "SET plan_cache_mode = force_generic_plan;
         PREPARE v(varchar) AS SELECT count(*) FROM pg_logical_slot_get_changes($1::name, NULL, NULL);
         EXECUTE v('s1');",
        // In a join condition.
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n
           ON n.oid = c.relnamespace
          AND pg_replication_slot_advance('s1', pg_last_wal_replay_lsn()) IS NOT NULL",
        // The extended protocol, the name a bound parameter.
        "SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL) \\bind s1 \\g",
        "SET plan_cache_mode = force_generic_plan;
         SELECT count(*) FROM pg_logical_slot_get_changes($1, NULL, NULL) \\bind s1 \\g",
        "SET plan_cache_mode = force_generic_plan;
         SELECT pg_replication_slot_advance($1, pg_last_wal_replay_lsn()) \\bind s1 \\g",
    ] {
        let got = psql_script(&standby, sql);
        assert!(
            got.as_ref().is_err_and(|e| e.contains(&refused)),
            "on the standby: {sql}\n{got:?}"
        );
    }

    // The copy did not move, nor did the primary's slot, and it is still synced.
    assert_eq!(slot_row(&standby, "s1"), copy_before);
    assert_eq!(slot_row(&primary, "s1"), primary_before);
    assert_eq!(
        standby.sql("SELECT state, ready FROM sync_logical_slot_status WHERE slot_name = 's1'"),
        "synced|t"
    );
    // The primary's consumer still gets row 2.
    let got = primary
        .sql("SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('s1', NULL, NULL)");
    assert_eq!(inserted_ids(&got), vec![2], "{got}");
}

/// The standby's own logical slots are its consumers': decoding works there,
/// and the sync (drop_extra_slots on) never moves, drops or reports them,
/// also one whose name the primary uses too.
#[test]
fn the_standbys_own_slots_are_never_touched() {
    if skipped_before_16("logical decoding on a standby is new in 16") {
        return;
    }
    let dir = TestDir::new("standby_decoding_own_slots");
    let (primary, standby) = primary_and_standby(&dir);
    assert_eq!(standby.sql("SHOW sync_logical_slot.drop_extra_slots"), "on");
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    settle_copy(&primary, &standby, "postgres", "s1");

    create_on_standby(&primary, &standby, "standby_own");
    for id in 1..=3 {
        primary.sql(&format!("INSERT INTO t VALUES ({id}, 'own')"));
    }
    standby.wait_for_catchup(&primary);
    let got = standby.sql(
        "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('standby_own', NULL, NULL)",
    );
    assert_eq!(inserted_ids(&got), vec![1, 2, 3], "{got}");
    // Streamed too.
    primary.sql("INSERT INTO t VALUES (4, 'own')");
    standby.wait_for_catchup(&primary);
    let endpos = standby.sql("SELECT pg_last_wal_replay_lsn()");
    let streamed = recvlogical(
        &standby,
        "standby_own",
        None,
        &endpos,
        &dir.path.join("own.out"),
    );
    assert_eq!(inserted_ids(&streamed), vec![4], "{streamed}");
    standby.poll_query_until(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_own'",
        "f",
    );
    let own = slot_row(&standby, "standby_own");

    // Sync passes that do work: s1 moves on the primary each time.
    for id in 10..13 {
        primary.sql(&format!("INSERT INTO t VALUES ({id}, 'pass')"));
        primary.sql("SELECT pg_log_standby_snapshot()");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)");
        standby.wait_for_catchup(&primary);
        sync_passes(&standby, 1);
    }
    wait_for_copy(&standby, &primary, "s1");
    sync_passes(&standby, 2);
    assert_eq!(slot_row(&standby, "standby_own"), own);
    assert!(!standby
        .datadir()
        .join("pg_replslot/standby_own/sync_logical_slot")
        .exists());
    assert_eq!(
        standby.sql("SELECT string_agg(slot_name, ',') FROM sync_logical_slot_status"),
        "s1"
    );

    // A slot of the standby's own whose name the primary then uses: reported, not touched.
    create_on_standby(&primary, &standby, "clash");
    let clash = slot_row(&standby, "clash");
    primary.sql("SELECT pg_create_logical_replication_slot('clash', 'test_decoding')");
    standby.poll_query_until(
        "SELECT state || '|' || last_error FROM sync_logical_slot_status WHERE slot_name = 'clash'",
        "error|a slot of this name exists on the standby and was not created by sync_logical_slot",
    );
    sync_passes(&standby, 3);
    assert_eq!(slot_row(&standby, "clash"), clash);

    // Gone from the primary: the copy goes, the standby's own slots stay.
    primary.sql("SELECT pg_drop_replication_slot('s1')");
    primary.sql("SELECT pg_drop_replication_slot('clash')");
    standby.poll_query_until(
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE slot_type = 'logical'",
        "clash,standby_own",
    );
    sync_passes(&standby, 2);
    assert_eq!(slot_row(&standby, "standby_own"), own);
    assert_eq!(slot_row(&standby, "clash"), clash);
    assert_eq!(
        standby.sql("SELECT count(*) FROM sync_logical_slot_status"),
        "0"
    );

    // And their consumers go on from where they were.
    primary.sql("INSERT INTO t VALUES (20, 'after')");
    standby.wait_for_catchup(&primary);
    let got = standby.sql(
        "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('standby_own', NULL, NULL)",
    );
    assert_eq!(inserted_ids(&got), vec![10, 11, 12, 20], "{got}");
    let got = standby.sql(
        "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('clash', NULL, NULL)",
    );
    assert_eq!(inserted_ids(&got), vec![20], "{got}");
}

const RECOPIED: &str =
    "the previous copy was invalidated on this standby (rows_removed) and is copied afresh";

/// A recovery conflict invalidates a copy on the standby (rows_removed): it
/// is dropped and copied afresh, the view says why until the new copy is
/// synced, and the other slot syncs meanwhile.
///
/// How: while the standby is down and its copies held back (nothing
/// selected), the primary forgets the standby's feedback (its physical slot
/// made anew), moves its slots past catalog rows deleted in database app and
/// vacuums them away. Replaying that vacuum, the standby invalidates the copy
/// of s1 (database app, catalog_xmin older than those rows); the copy of s2
/// (database postgres) has no conflict.
#[test]
fn a_copy_invalidated_on_the_standby_is_copied_afresh() {
    if skipped_before_16(
        "a standby invalidates a logical slot on a recovery conflict (rows_removed) from 16 on",
    ) {
        return;
    }
    let dir = TestDir::new("standby_decoding_recopy");
    let (primary, standby) = vacuum_ready_cluster(&dir, "t (id int PRIMARY KEY, v text)", None);
    primary.sql_in(
        "app",
        "SELECT pg_create_logical_replication_slot('s1', 'test_decoding')",
    );
    primary.sql("SELECT pg_create_logical_replication_slot('s2', 'test_decoding')");
    settle_copy(&primary, &standby, "app", "s1");
    settle_copy(&primary, &standby, "postgres", "s2");
    let copy_xmin: i64 = standby
        .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 's1'")
        .parse()
        .unwrap();

    // Keep the copies as they are: nothing selected, nothing dropped.
    let offset = standby.log_offset();
    standby.sql("ALTER SYSTEM SET sync_logical_slot.slot_names = 'nothing_selected'");
    standby.sql("ALTER SYSTEM SET sync_logical_slot.drop_extra_slots = off");
    standby.reload();
    standby.wait_for_log(
        "sync_logical_slot.slot_names = 'nothing_selected' selects none of them",
        offset,
    );
    standby.stop();

    // The primary forgets the standby's feedback...
    primary.sql("SELECT pg_drop_replication_slot('standby1')");
    primary.sql("SELECT pg_create_physical_replication_slot('standby1', true)");
    // ...deletes catalog rows of database app...
    for i in 0..5 {
        primary.sql_in("app", &format!("CREATE TABLE churn{i} (a int, b text)"));
        primary.sql_in("app", &format!("DROP TABLE churn{i}"));
    }
    let after_churn: i64 = primary.sql("SELECT txid_current()").parse().unwrap();
    assert!(copy_xmin < after_churn);
    // ...its slots move past them...
    let deadline = Instant::now() + DEADLINE;
    let passed = format!(
        "SELECT bool_and(catalog_xmin::text::bigint > {after_churn}) FROM pg_replication_slots WHERE slot_type = 'logical'"
    );
    loop {
        primary.sql("SELECT pg_log_standby_snapshot()");
        primary.sql_in(
            "app",
            "SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)",
        );
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s2', NULL, NULL)");
        if primary.sql(&passed) == "t" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary's slots stay behind xid {after_churn}: {}",
            primary.sql(LOGICAL_SLOTS)
        );
        sleep(Duration::from_millis(200));
    }
    // ...and vacuums them away.
    primary.sql_in("app", "VACUUM pg_class, pg_attribute, pg_type, pg_depend");

    // Replaying the vacuum, the standby invalidates the copy of s1 only.
    standby.start();
    standby.poll_query_until(
        "SELECT conflicting FROM pg_replication_slots WHERE slot_name = 's1'",
        "t",
    );
    assert_eq!(
        standby.sql("SELECT conflicting FROM pg_replication_slots WHERE slot_name = 's2'"),
        "f"
    );

    // The standby restarts from a restartpoint past s1's restart_lsn on the
    // primary, so that the new copy, which reserves WAL from the
    // restartpoint's redo pointer, waits there for s1's consumer (and the
    // view shows why it was re-made meanwhile).
    primary.sql("CHECKPOINT");
    standby.wait_for_catchup(&primary);
    standby.sql("CHECKPOINT");

    // Selected again: s1 is copied afresh, and the view says why.
    let offset = standby.log_offset();
    standby.sql("ALTER SYSTEM RESET sync_logical_slot.slot_names");
    standby.sql("ALTER SYSTEM RESET sync_logical_slot.drop_extra_slots");
    standby.reload();
    let at = standby.wait_for_log("re-creating replication slot \"s1\"", offset);
    standby.wait_for_log(
        "DETAIL:  The copy was invalidated on this standby (rows_removed): it is dropped and copied afresh.",
        at,
    );
    standby.poll_query_until(
        "SELECT last_error FROM sync_logical_slot_status WHERE slot_name = 's1'",
        RECOPIED,
    );
    assert_eq!(
        standby.sql("SELECT conflicting FROM pg_replication_slots WHERE slot_name = 's1'"),
        "f",
        "the copy of s1 is a new one"
    );

    // Meanwhile s2 syncs: its consumer moves on, the copy follows.
    primary.sql("INSERT INTO t VALUES (1, 'meanwhile')");
    primary.sql("SELECT pg_log_standby_snapshot()");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s2', NULL, NULL)");
    wait_for_copy(&standby, &primary, "s2");
    assert_eq!(
        standby.sql(
            "SELECT state, ready, last_error FROM sync_logical_slot_status WHERE slot_name = 's1'"
        ),
        format!("waiting_for_remote|f|{RECOPIED}"),
        "the new copy of s1 waits for its consumer on the primary"
    );

    // s1's consumer moves on: the new copy is synced, and the view says nothing more.
    settle_copy(&primary, &standby, "app", "s1");
    assert_eq!(
        standby.sql(
            "SELECT string_agg(concat_ws('|', slot_name, state, ready, last_error), ',' ORDER BY slot_name)
               FROM sync_logical_slot_status"
        ),
        "s1|synced|t,s2|synced|t"
    );
    assert!(
        !standby
            .log_since(offset)
            .contains("re-creating replication slot \"s2\""),
        "s2's copy was re-created"
    );
}

/// Whether the worker asked the primary for a running-xacts record, from
/// the primary's log (log_statement = all, application name in the prefix).
fn snapshot_requests(primary: &Node, offset: usize) -> usize {
    primary
        .log_since(offset)
        .lines()
        .filter(|l| {
            l.contains(" sync_logical_slot ")
                && l.contains("statement: SELECT pg_catalog.pg_log_standby_snapshot()")
        })
        .count()
}

/// A new slot `name` on the primary, streamed by pg_recvlogical (status every
/// second), which the standby then selects (with those of `selected`). The
/// copy reserves WAL from the standby's last restartpoint; so that the
/// primary's slot restarts before it, a transaction with a change stays open
/// on the primary across a checkpoint and the standby's restartpoint (the
/// slot cannot restart past that change while it is open). The copy then
/// waits (waiting_for_remote) until the consumer decodes a running-xacts
/// record logged after the transaction ends; it is committed once the copy
/// was seen waiting. Fails unless the copy was seen waiting.
fn waiting_copy(
    dir: &TestDir,
    primary: &Node,
    standby: &Node,
    name: &str,
    selected: &mut Vec<String>,
) -> Receiver {
    primary.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{name}', 'test_decoding')"
    ));
    let receiver = Receiver::start(primary, name, &dir.path.join(format!("{name}.out")));
    primary.poll_query_until(
        &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{name}'"),
        "t",
    );
    let open_transactions =
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'";
    let mut open = Session::open(primary, "postgres");
    open.send("BEGIN; INSERT INTO hold VALUES (1);");
    primary.poll_query_until(open_transactions, "1");
    primary.sql("CHECKPOINT");
    standby.wait_for_catchup(primary);
    standby.sql("CHECKPOINT");
    selected.push(name.to_string());
    let offset = standby.log_offset();
    standby.sql(&format!(
        "ALTER SYSTEM SET sync_logical_slot.slot_names = '{}'",
        selected.join(", ")
    ));
    standby.reload();
    let waiting = format!("replication slot \"{name}\" is not ready: waiting_for_remote");
    let persistent = format!("replication slot \"{name}\" is now persistent");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = standby.log_since(offset);
        if let Some(at) = log.find(&waiting) {
            let detail = log[at..].lines().nth(1).unwrap_or("");
            assert!(
                detail.contains("is behind what this standby reserved"),
                "{name} waits for something else: {detail}"
            );
            open.send("COMMIT;");
            primary.poll_query_until(open_transactions, "0");
            return receiver;
        }
        assert!(
            !log.contains(&persistent),
            "the copy of {name} never waited: the primary's slot had passed the standby's reservation\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no copy of {name} after {DEADLINE:?}\n{log}"
        );
        sleep(Duration::from_millis(100));
    }
}

/// `sync_logical_slot.log_standby_snapshot`: off, the worker never calls
/// pg_log_standby_snapshot() on the primary; on, it does for a waiting copy,
/// which then becomes synced; as a role without EXECUTE on
/// it, the worker warns with a hint, and says so when it works again.
#[test]
fn log_standby_snapshot_asks_the_primary_only_when_on() {
    if skipped_before_16("pg_log_standby_snapshot() is new in 16") {
        return;
    }
    let dir = TestDir::new("standby_decoding_log_snapshot");
    let primary = dir.primary("primary");
    primary.append_conf("log_statement = all\nlog_line_prefix = '%m [%p] %b %a '");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE hold (x int)");
    // A least-privilege role for the worker, for later (README, set-up step 2).
    create_worker_role(&primary);
    let standby = dir.standby("standby1", &primary);
    standby.append_conf(KEEP_RESERVING_AT_THE_RESTARTPOINT);
    standby.start();
    standby.sql("ALTER SYSTEM SET sync_logical_slot.slot_names = 'none_yet'");
    standby.reload();
    let mut selected = Vec::new();
    let mut consumers = Vec::new();

    // Off (the default): a waiting copy, passes, and no request.
    assert_eq!(
        standby.sql("SHOW sync_logical_slot.log_standby_snapshot"),
        "off"
    );
    consumers.push(waiting_copy(
        &dir,
        &primary,
        &standby,
        "quiet_a",
        &mut selected,
    ));
    sync_passes(&standby, 3);
    assert_eq!(
        snapshot_requests(&primary, 0),
        0,
        "the worker called pg_log_standby_snapshot() with the setting off"
    );
    assert!(!primary.log_since(0).contains("pg_log_standby_snapshot"));

    // On: a new waiting copy, a request at once, and the copies become synced.
    let primary_offset = primary.log_offset();
    standby.sql("ALTER SYSTEM SET sync_logical_slot.log_standby_snapshot = on");
    standby.reload();
    standby.poll_query_until("SHOW sync_logical_slot.log_standby_snapshot", "on");
    consumers.push(waiting_copy(
        &dir,
        &primary,
        &standby,
        "quiet_b",
        &mut selected,
    ));
    primary.wait_for_log(
        "sync_logical_slot LOG:  statement: SELECT pg_catalog.pg_log_standby_snapshot()",
        primary_offset,
    );
    for slot in ["quiet_a", "quiet_b"] {
        standby.poll_query_until(&status_of(slot), "synced");
    }

    // A role without EXECUTE on pg_log_standby_snapshot(): warned, with a hint.
    connect_worker_as_slot_sync(&standby, &primary);
    primary.poll_query_until(
        "SELECT string_agg(DISTINCT usename::text, ',') FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'",
        "slot_sync",
    );
    let offset = standby.log_offset();
    let primary_offset = primary.log_offset();
    consumers.push(waiting_copy(
        &dir,
        &primary,
        &standby,
        "quiet_c",
        &mut selected,
    ));
    let at = standby.wait_for_log(
        "WARNING:  could not ask the primary server for a running-xacts record",
        offset,
    );
    standby.wait_for_log(
        "HINT:  On the primary, GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO the worker's role",
        at,
    );
    primary.wait_for_log(
        "ERROR:  permission denied for function pg_log_standby_snapshot",
        primary_offset,
    );

    // Granted: the requests work again, and the log says so.
    let offset = standby.log_offset();
    primary.sql("GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO slot_sync");
    consumers.push(waiting_copy(
        &dir,
        &primary,
        &standby,
        "quiet_d",
        &mut selected,
    ));
    standby.wait_for_log(
        "the primary server logs running-xacts records for new copies again",
        offset,
    );
    for slot in ["quiet_c", "quiet_d"] {
        standby.poll_query_until(&status_of(slot), "synced");
    }
    assert!(consumers.iter_mut().all(|c| c.running()));
}

/// Consumes slot s1 (pgoutput) on the primary by SQL.
const PGOUTPUT_CONSUME: &str = "SELECT count(*) FROM pg_logical_slot_get_binary_changes('s1', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub')";

/// A consumer on the standby asking for two-phase decoding of a copy: core
/// enables it on the slot before the refusal can answer. The copy, whose
/// primary slot has two-phase decoding off, is then re-made, so that after a
/// failover it decodes as the primary's slot did.
#[test]
fn a_copy_given_two_phase_by_a_refused_consumer_is_made_again() {
    if skipped_before_16("logical decoding on a standby is new in 16") {
        return;
    }
    let dir = TestDir::new("standby_decoding_two_phase");
    let (primary, standby) = primary_and_standby(&dir);
    // pgoutput: its two_phase option (protocol 3) enables two-phase
    // decoding on the slot when streaming starts.
    primary.sql("CREATE PUBLICATION pub FOR ALL TABLES");
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'pgoutput')");
    settle_copy_consuming(&primary, &standby, "postgres", "s1", PGOUTPUT_CONSUME);
    assert_eq!(
        standby.sql("SELECT two_phase FROM pg_replication_slots WHERE slot_name = 's1'"),
        "f"
    );

    let offset = standby.log_offset();
    let endpos = standby.sql("SELECT pg_last_wal_replay_lsn()");
    let file = dir.path.join("s1-two-phase.out");
    let mut recv = recvlogical_command(&standby, "s1", &file);
    recv.args([
        "-E",
        &endpos,
        "-o",
        "proto_version=3",
        "-o",
        "publication_names=pub",
        "-o",
        "two_phase=on",
    ]);
    let out = output_within_deadline(recv, "pg_recvlogical with two-phase decoding on the copy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(REFUSED),
        "pg_recvlogical on the copy: {}\n{stderr}",
        out.status
    );

    // The next pass sees two-phase decoding the primary's slot does not have.
    standby.sql("SELECT * FROM sync_logical_slot_sync_now()");
    let at = standby.wait_for_log("re-creating replication slot \"s1\"", offset);
    standby.wait_for_log("but the primary's slot has it disabled", at);
    settle_copy_consuming(&primary, &standby, "postgres", "s1", PGOUTPUT_CONSUME);
    assert_eq!(
        standby.sql("SELECT two_phase FROM pg_replication_slots WHERE slot_name = 's1'"),
        "f",
        "the copy kept two-phase decoding"
    );
}

/// Refuses (`refuse`) or allows again physical replication connections on
/// `primary` (a `reject` line first in pg_hba.conf, then a reload): a
/// walreceiver cannot reconnect meanwhile, the sync worker (a `replication=database`
/// connection, matched by database name) still can.
fn refuse_physical_replication(primary: &Node, refuse: bool) {
    const REJECT: &str = "host replication all 127.0.0.1/32 reject";
    let hba = primary.datadir().join("pg_hba.conf");
    let current = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let kept: Vec<&str> = current.lines().filter(|l| *l != REJECT).collect();
    let mut lines = Vec::new();
    if refuse {
        lines.push(REJECT);
    }
    lines.extend(kept);
    std::fs::write(&hba, lines.join("\n") + "\n").expect("write pg_hba.conf");
    primary.reload();
}

/// Waits until `standby` has replayed everything `primary` has written so
/// far; fails at the deadline with what replay is waiting for (the startup
/// process's wait event), the standby's logical slots, the status view and
/// its log.
fn wait_for_replay(standby: &Node, primary: &Node) {
    let lsn = primary.sql("SELECT pg_current_wal_lsn()");
    let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    let deadline = Instant::now() + DEADLINE;
    while standby.try_sql(&caught_up).as_deref() != Ok("t") {
        if Instant::now() > deadline {
            panic!(
                "on {}: replay did not reach the primary's {lsn} in {DEADLINE:?}: replayed up to {:?}, received up to {:?}\n\
                 startup process waiting on: {:?}\n\
                 logical slots (name|temporary|restart_lsn|confirmed_flush_lsn|catalog_xmin):\n{:?}\n\
                 status: {:?}\n--- log of {} ---\n{}",
                standby.name,
                standby.try_sql("SELECT pg_last_wal_replay_lsn()"),
                standby.try_sql("SELECT pg_last_wal_receive_lsn()"),
                standby.try_sql(
                    "SELECT concat_ws(' ', wait_event_type, wait_event) FROM pg_stat_activity WHERE backend_type = 'startup'"
                ),
                standby.try_sql(LOGICAL_SLOTS),
                standby.try_sql("SELECT concat_ws('|', slot_name, state, ready, last_error) FROM sync_logical_slot_status"),
                standby.name,
                standby.log_tail()
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// A new copy is a temporary slot that the worker keeps (active, its pid)
/// while it waits for the primary's slot. When replay meets a catalog prune
/// that conflicts with that copy's catalog_xmin, the startup process asks the
/// worker to release it and waits until it does: replay must not stall, the
/// copy is made again, becomes synced once the primary's slot moves, and the
/// standby can be promoted.
///
/// How: the standby's own slot `holder` (database postgres) is made first; a
/// new copy reserves the standby's oldest safe decoding xid, which that slot
/// holds back, so the copy's catalog_xmin is older than catalog rows deleted
/// afterwards in database app. Then `s1` (database app) is made on the
/// primary, the rows are deleted, and s1 is consumed past them while a
/// transaction that began after the deletions stays open (catalog_xmin past
/// the deletions, restart_lsn held before that transaction), across a
/// checkpoint and the standby's restartpoint. Selected, s1's copy waits
/// (temporary, waiting_for_remote: s1 restarts before the restartpoint). The
/// primary then forgets the standby's feedback (physical replication refused,
/// walsender terminated, slot `standby1` made anew) and vacuums the catalogs
/// of app: their dead rows go, in WAL that the standby replays once it is
/// let in again.
#[test]
fn a_recovery_conflict_on_a_waiting_copy_does_not_stall_replay() {
    if skipped_before_16(
        "a standby invalidates a logical slot on a recovery conflict (rows_removed) from 16 on",
    ) {
        return;
    }
    let dir = TestDir::new("standby_decoding_conflict_waiting");
    let (primary, standby) = vacuum_ready_cluster(&dir, "hold (x int)", Some("none_yet"));

    // The holder of the standby's oldest safe decoding xid.
    create_on_standby(&primary, &standby, "holder");
    let holder_xmin: i64 = standby
        .sql("SELECT catalog_xmin FROM pg_replication_slots WHERE slot_name = 'holder'")
        .parse()
        .unwrap();

    // s1, then catalog rows of app deleted after the holder's catalog_xmin.
    primary.sql_in(
        "app",
        "SELECT pg_create_logical_replication_slot('s1', 'test_decoding')",
    );
    let before_churn: i64 = primary.sql("SELECT txid_current()").parse().unwrap();
    for i in 0..5 {
        primary.sql_in("app", &format!("CREATE TABLE churn{i} (a int, b text)"));
        primary.sql_in("app", &format!("DROP TABLE churn{i}"));
    }
    let after_churn: i64 = primary.sql("SELECT txid_current()").parse().unwrap();
    assert!(holder_xmin <= before_churn);
    // A running-xacts record after the deletions: decoding s1, the changes
    // that follow take snapshots whose xmin is past them.
    primary.sql("SELECT pg_log_standby_snapshot()");

    // A transaction open from after the deletions: s1, consumed, moves its
    // catalog_xmin past them but restarts before that transaction.
    let open_transactions =
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'";
    let mut open = Session::open(&primary, "postgres");
    open.send("BEGIN; INSERT INTO hold VALUES (1);");
    primary.poll_query_until(open_transactions, "1");
    let s1_past_churn = format!(
        "SELECT catalog_xmin::text::bigint > {after_churn} FROM pg_replication_slots WHERE slot_name = 's1'"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        primary.sql("SELECT pg_log_standby_snapshot()");
        primary.sql_in(
            "app",
            "SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)",
        );
        if primary.sql(&s1_past_churn) == "t" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s1 stays behind xid {after_churn}: {}",
            primary.sql(LOGICAL_SLOTS)
        );
        sleep(Duration::from_millis(200));
    }
    primary.sql("CHECKPOINT");
    standby.wait_for_catchup(&primary);
    standby.sql("CHECKPOINT");

    // Selected: the copy waits, temporary, with the holder's catalog_xmin.
    let offset = standby.log_offset();
    standby.sql("ALTER SYSTEM SET sync_logical_slot.slot_names = 's1'");
    standby.reload();
    let at = standby.wait_for_log(
        "replication slot \"s1\" is not ready: waiting_for_remote",
        offset,
    );
    let detail = standby.log_since(at);
    let detail = detail.lines().nth(1).unwrap_or("");
    assert!(
        detail.contains("is behind what this standby reserved"),
        "s1's copy waits for something else: {detail}"
    );
    open.send("COMMIT;");
    primary.poll_query_until(open_transactions, "0");
    assert_eq!(
        standby.sql(
            "SELECT concat_ws('|', temporary, catalog_xmin) FROM pg_replication_slots WHERE slot_name = 's1'"
        ),
        format!("t|{holder_xmin}"),
        "s1's copy is temporary and reserves the holder's catalog_xmin"
    );
    assert_eq!(standby.sql(&status_of("s1")), "waiting_for_remote");
    let worker = standby.worker_pid();
    assert_eq!(
        standby.sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's1'"),
        worker,
        "the worker keeps its temporary copy"
    );

    // The primary forgets the standby's feedback: the walreceiver is kept
    // out, and standby1 is made anew, without xmin or catalog_xmin.
    refuse_physical_replication(&primary, true);
    primary.sql(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
          WHERE slot_name = 'standby1' AND active_pid IS NOT NULL",
    );
    primary.poll_query_until(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'",
        "f",
    );
    primary.sql("SELECT pg_drop_replication_slot('standby1')");
    primary.sql("SELECT pg_create_physical_replication_slot('standby1', true)");
    assert_eq!(
        primary.sql(
            "SELECT concat_ws('|', xmin, catalog_xmin) FROM pg_replication_slots WHERE slot_name = 'standby1'"
        ),
        ""
    );
    // Nothing on the primary holds the deleted rows any more: they go.
    primary.sql_in("app", "VACUUM pg_class, pg_attribute, pg_type, pg_depend");
    // The copy still waits, temporary, held by the worker.
    assert_eq!(
        standby.sql(
            "SELECT concat_ws('|', temporary, active_pid) FROM pg_replication_slots WHERE slot_name = 's1'"
        ),
        format!("t|{worker}")
    );

    // Let in again, the standby replays the vacuum: a conflict with the copy.
    let offset = standby.log_offset();
    refuse_physical_replication(&primary, false);
    standby.wait_for_log(
        &format!("terminating process {worker} to release replication slot \"s1\""),
        offset,
    );
    // Replay goes on.
    wait_for_replay(&standby, &primary);
    assert_eq!(
        standby.sql("SELECT conflicting FROM pg_replication_slots WHERE slot_name = 'holder'"),
        "f",
        "the holder (database postgres) has no conflict"
    );

    // The copy is made again and waits; once s1 moves, it is synced.
    standby.poll_query_until(
        "SELECT temporary AND NOT conflicting FROM pg_replication_slots WHERE slot_name = 's1'",
        "t",
    );
    settle_copy(&primary, &standby, "app", "s1");
    standby.poll_query_until(&status_of("s1"), "synced");

    // And the standby can be promoted.
    standby.promote();
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "f");
    standby.poll_query_until(
        "SELECT NOT temporary FROM pg_replication_slots WHERE slot_name = 's1'",
        "t",
    );
}
