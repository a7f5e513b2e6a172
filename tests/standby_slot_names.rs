//! # No change reaches a logical consumer before the standbys have it
//!
//! ```text
//!  primary (sync_logical_slot.standby_slot_names = 'standby1')  ──▶ standby1 (stopped, then started)
//!    slot recv  ◀── pg_recvlogical
//!    slot sql   ◀── pg_logical_slot_get_changes()
//!    slot sub   ◀── subscriber (CREATE SUBSCRIPTION)
//! ```
//! docs/design.md invariant 7: with the standby down, no consumer receives a new
//! transaction; once it is back, all do. A waiting walsender whose client is
//! killed frees the slot for the next client at once; removing the standby
//! from the setting and reloading releases the waiters; a named slot that
//! does not exist is warned about; with a quorum of one, one standby is enough.
//! No keepalive tells a consumer of a position the standbys lack either:
//! WAL with nothing for the consumer (another database's writes) is decoded
//! past the standby's flush, and a consumer that confirms keepalive
//! positions (pg_recvlogical does) would, after a failover, skip the new
//! primary's first transactions written below that position.

mod common;
use common::*;
use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

const GET: &str =
    "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('sql', NULL, NULL)";

/// Waits until pg_recvlogical (still running) has written row `id` to `out`.
fn wait_for_row(out: &std::path::Path, receiver: &mut Receiver, id: i64) {
    let deadline = Instant::now() + DEADLINE;
    while !inserted_ids(&fs::read_to_string(out).unwrap_or_default()).contains(&id) {
        assert!(
            Instant::now() < deadline && receiver.running(),
            "pg_recvlogical never got row {id}"
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn consumers_get_nothing_the_standby_lacks() {
    let dir = TestDir::new("standby_slot_names");
    let (primary, standby) = primary_holding_for_standby1(&dir);
    // A table whose COPY rows start with 'w', as XLogData messages do: the
    // table sync of the subscription must not be mistaken for streaming.
    primary.sql("CREATE TABLE w (name text)");
    primary.sql("INSERT INTO w VALUES ('william shakespeare'), ('wwwwwwwwwwwwwwwwwwww')");
    primary.sql("ALTER PUBLICATION pub ADD TABLE w");
    let subscriber = dir.plain("subscriber");
    subscriber.start();
    subscriber.sql("CREATE TABLE t (id int, v text)");
    subscriber.sql("CREATE TABLE w (name text)");
    subscriber.sql(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub",
        primary.conninfo("postgres")
    ));
    subscriber.poll_query_until(
        "SELECT count(*) FILTER (WHERE srsubstate = 'r') || '/' || count(*) FROM pg_subscription_rel",
        "2/2",
    );
    assert_eq!(subscriber.sql("SELECT count(*) FROM w"), "2");
    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('sql', 'test_decoding')");
    let out = dir.path.join("recv.out");
    let mut receiver = Receiver::start(&primary, "recv", &out);

    primary.sql("INSERT INTO t VALUES (1, 'standby up')");
    subscriber.poll_query_until("SELECT count(*) FROM t", "1");
    assert!(primary.sql(GET).contains("id[integer]:1 "));
    wait_for_row(&out, &mut receiver, 1);

    // The standby goes away: row 2 reaches no consumer.
    standby.stop();
    primary.sql("INSERT INTO t VALUES (2, 'standby down')");
    sleep(Duration::from_secs(3));
    assert_eq!(
        subscriber.sql("SELECT count(*) FROM t"),
        "1",
        "the subscriber got a row the standby lacks"
    );
    assert!(
        !inserted_ids(&fs::read_to_string(&out).unwrap()).contains(&2),
        "pg_recvlogical got a row the standby lacks"
    );
    let held = primary.try_sql(&format!("SET statement_timeout = '3s'; {GET}"));
    assert!(
        held.as_ref()
            .is_err_and(|e| e.contains("statement timeout")),
        "pg_logical_slot_get_changes returned a row the standby lacks: {held:?}"
    );
    assert!(receiver.running());

    // The standby is back: everyone gets row 2, once.
    standby.start();
    subscriber.poll_query_until("SELECT count(*) FROM t", "2");
    assert!(
        primary.sql(GET).contains("id[integer]:2 "),
        "the cancelled call consumed nothing"
    );
    let deadline = Instant::now() + DEADLINE;
    while !inserted_ids(&fs::read_to_string(&out).unwrap_or_default()).contains(&2) {
        assert!(Instant::now() < deadline, "pg_recvlogical never got row 2");
        sleep(Duration::from_millis(100));
    }
    assert_eq!(inserted_ids(&fs::read_to_string(&out).unwrap()), vec![1, 2]);
}

#[test]
fn no_keepalive_carries_a_position_the_standby_lacks() {
    let dir = TestDir::new("standby_slot_names_keepalive");
    let (primary, standby) = primary_holding_for_standby1(&dir);
    primary.sql("CREATE DATABASE other");
    primary.sql_in("other", "CREATE TABLE elsewhere (x int)");
    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");
    let out = dir.path.join("recv.out");
    let mut receiver = Receiver::start(&primary, "recv", &out);
    primary.sql("INSERT INTO t VALUES (1, 'standby up')");
    wait_for_row(&out, &mut receiver, 1);
    standby.wait_for_catchup(&primary);

    // The standby goes away; WAL keeps coming, none of it for this consumer.
    standby.stop();
    let flushed_by_standby =
        primary.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'standby1'");
    for i in 0..20 {
        primary.sql_in("other", &format!("INSERT INTO elsewhere VALUES ({i})"));
    }
    let written = primary.sql("SELECT pg_current_wal_flush_lsn()");
    // pg_recvlogical reports what it has every second (-s 1): give it time
    // to confirm whatever position a keepalive told it.
    sleep(Duration::from_secs(4));
    assert!(receiver.running());
    assert_eq!(
        primary.sql(&format!(
            "SELECT confirmed_flush_lsn <= '{flushed_by_standby}'
               FROM pg_replication_slots WHERE slot_name = 'recv'"
        )),
        "t",
        "the consumer confirmed {} (WAL written to {written}), past what the standby flushed ({flushed_by_standby})",
        primary.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'recv'")
    );

    // A shutdown now, the standby still away, does not wait for ever on a
    // consumer that cannot confirm what the walsender read (pg_ctl gives 60 s).
    let started = Instant::now();
    primary.stop();
    println!(
        "primary stopped in {:?} with its standby away",
        started.elapsed()
    );
    primary.start();

    // Back: the consumer confirms on, and gets the next row once.
    standby.start();
    drop(receiver);
    let _receiver = Receiver::start(&primary, "recv", &out);
    primary.sql("INSERT INTO t VALUES (2, 'standby back')");
    primary.poll_query_until(
        &format!(
            "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = 'recv'"
        ),
        "t",
    );
    // Row 1 may come again: on 15 and 16 a restart may give a logical slot
    // back an older confirmed position (the walsender does not mark it dirty
    // when only that moved, so the shutdown checkpoint keeps the old one),
    // and this consumer resumes from the slot. Row 2 comes once.
    let ids = inserted_ids(&fs::read_to_string(&out).unwrap());
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1, "{ids:?}");
    assert!(ids.iter().all(|&i| i == 1 || i == 2), "{ids:?}");
}

#[test]
fn killed_client_frees_its_slot_and_a_reload_releases_waiters() {
    let dir = TestDir::new("standby_slot_names_release");
    let (primary, standby) = primary_holding_for_standby1(&dir);
    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");
    primary.sql("SELECT pg_create_logical_replication_slot('sql', 'test_decoding')");
    standby.stop();
    primary.sql("INSERT INTO t VALUES (1, 'held')");

    // A walsender held for the standby; its client is killed.
    let out = dir.path.join("recv.out");
    let mut first = Receiver::start(&primary, "recv", &out);
    primary.poll_query_until(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'recv'",
        "t",
    );
    sleep(Duration::from_millis(500));
    assert!(inserted_ids(&fs::read_to_string(&out).unwrap_or_default()).is_empty());
    first.kill9();
    let killed_at = Instant::now();
    let second_out = dir.path.join("recv2.out");
    let mut second;
    loop {
        second = Receiver::start(&primary, "recv", &second_out);
        sleep(Duration::from_millis(300));
        if second.running() {
            break;
        }
        assert!(
            killed_at.elapsed() < DEADLINE,
            "the slot stayed busy after its client was killed"
        );
    }
    eprintln!(
        "a new consumer had the slot {:?} after the old one was killed",
        killed_at.elapsed()
    );

    // A SQL consumer waits too, and a missing name is warned about.
    let offset = primary.log_offset();
    primary.sql("ALTER SYSTEM SET sync_logical_slot.standby_slot_names = 'standby1, ghost'");
    primary.sql("SELECT pg_reload_conf()");
    let waiting = sql_in_thread(primary.port, GET);
    primary.wait_for_log(
        "names replication slots that confirm nothing: \"ghost\" does not exist",
        offset,
    );
    assert!(!waiting.is_finished());

    // Taking the standbys out of the setting releases every waiter.
    primary.sql("ALTER SYSTEM SET sync_logical_slot.standby_slot_names = ''");
    primary.sql("SELECT pg_reload_conf()");
    let released = waiting.join().unwrap();
    assert!(
        released
            .as_ref()
            .is_ok_and(|r| r.contains("id[integer]:1 ")),
        "{released:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    while !inserted_ids(&fs::read_to_string(&second_out).unwrap_or_default()).contains(&1) {
        assert!(
            Instant::now() < deadline && second.running(),
            "the walsender stayed held after the reload"
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_quorum_of_one_needs_one_standby() {
    let dir = TestDir::new("standby_slot_names_quorum");
    let primary = dir.primary("primary");
    primary.append_conf("sync_logical_slot.standby_slot_names = 'standby1, standby2'\nsync_logical_slot.standby_slots_min_confirmed = 1");
    primary.start();
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let s1 = dir.standby("standby1", &primary);
    s1.start();
    let s2 = dir.standby("standby2", &primary);
    s2.start();
    primary.sql("SELECT pg_create_logical_replication_slot('sql', 'test_decoding')");
    s2.stop();
    primary.sql("INSERT INTO t VALUES (1, 'one standby is enough')");
    let got = primary.sql(&format!("SET statement_timeout = '60s'; {GET}"));
    assert!(got.contains("id[integer]:1 "), "{got}");
    // With both required, the stopped one holds it.
    primary.sql("ALTER SYSTEM SET sync_logical_slot.standby_slots_min_confirmed = -1");
    primary.sql("SELECT pg_reload_conf()");
    primary.sql("INSERT INTO t VALUES (2, 'both needed')");
    let held = primary.try_sql(&format!("SET statement_timeout = '2s'; {GET}"));
    assert!(held.is_err(), "{held:?}");
    s2.start();
    assert!(primary.sql(GET).contains("id[integer]:2 "));
    s1.stop();
}

/// Fail closed: a malformed `standby_slot_names` at server start does not
/// turn the protection off. Logical consumers wait and the log says why until
/// the value is corrected; a reload with a bad value keeps the good one.
#[test]
fn a_malformed_value_at_start_holds_consumers_until_corrected() {
    let dir = TestDir::new("standby_slot_names_fail_closed");
    let (primary, standby) = primary_holding_for_standby1(&dir);
    primary.sql("SELECT pg_create_logical_replication_slot('sql', 'test_decoding')");
    let out = dir.path.join("recv.out");
    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");

    // A typo (a space inside a name) in postgresql.conf, then a restart.
    let offset = primary.log_offset();
    primary.append_conf("sync_logical_slot.standby_slot_names = 'standby1, Standby 2'");
    primary.restart();
    primary.wait_for_log(
        "invalid value for parameter \"sync_logical_slot.standby_slot_names\": \"standby1, Standby 2\"",
        offset,
    );
    assert!(primary.is_running());
    assert_eq!(
        primary.sql("SHOW sync_logical_slot.standby_slot_names"),
        "standby1, Standby 2",
        "the malformed value is kept, not replaced by the empty default"
    );
    // Sessions that do not use the extension see nothing of it: parallel
    // workers take the leader's (kept) value too.
    assert_eq!(forced_parallel_query(&primary).as_deref(), Ok("t"));
    standby.wait_for_catchup(&primary);
    primary.sql("INSERT INTO t VALUES (1, 'held by a typo')");
    let mut receiver = Receiver::start(&primary, "recv", &out);
    let held = primary.try_sql(&format!("SET statement_timeout = '3s'; {GET}"));
    assert!(
        held.as_ref()
            .is_err_and(|e| e.contains("statement timeout")),
        "a consumer got a change while standby_slot_names was malformed: {held:?}"
    );
    primary.wait_for_log(
        "logical decoding waits: sync_logical_slot.standby_slot_names is invalid",
        offset,
    );
    assert!(
        inserted_ids(&fs::read_to_string(&out).unwrap_or_default()).is_empty(),
        "pg_recvlogical got a change while standby_slot_names was malformed"
    );

    // Corrected and reloaded: both consumers get the row.
    primary.sql("ALTER SYSTEM SET sync_logical_slot.standby_slot_names = 'standby1'");
    primary.sql("SELECT pg_reload_conf()");
    let got = primary.sql(&format!("SET statement_timeout = '60s'; {GET}"));
    assert!(got.contains("id[integer]:1 "), "{got}");
    let deadline = Instant::now() + DEADLINE;
    while !inserted_ids(&fs::read_to_string(&out).unwrap_or_default()).contains(&1) {
        assert!(
            Instant::now() < deadline && receiver.running(),
            "pg_recvlogical never got row 1 after the setting was corrected"
        );
        sleep(Duration::from_millis(100));
    }

    // A bad value at reload is refused; the good one stays and still protects.
    let offset = primary.log_offset();
    primary.sql("ALTER SYSTEM RESET sync_logical_slot.standby_slot_names");
    primary.append_conf("sync_logical_slot.standby_slot_names = 'Standby 2'");
    primary.sql("SELECT pg_reload_conf()");
    primary.wait_for_log(
        "invalid value for parameter \"sync_logical_slot.standby_slot_names\": \"Standby 2\"",
        offset,
    );
    assert_eq!(
        primary.sql("SHOW sync_logical_slot.standby_slot_names"),
        "standby1"
    );
    standby.stop();
    primary.sql("INSERT INTO t VALUES (2, 'standby down')");
    let held = primary.try_sql(&format!("SET statement_timeout = '2s'; {GET}"));
    assert!(
        held.as_ref()
            .is_err_and(|e| e.contains("statement timeout")),
        "{held:?}"
    );
}
