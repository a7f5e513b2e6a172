//! # Signals, barriers and reloads do not end a streaming (or held) logical walsender
//!
//! ```text
//!  primary (sync_logical_slot.standby_slot_names = 'standby1') ──▶ standby1 (stopped and started around each step)
//!    writer: one INSERT a transaction into t, all along
//!    slot recv ◀── pg_recvlogical (test_decoding, --no-loop: a lost connection ends it)
//!    slot sub  ◀── subscriber (CREATE SUBSCRIPTION sub ... PUBLICATION pub)
//!  each step, once while standby1 streams and once while it is down (the
//!  walsenders held for it):
//!    1. CREATE DATABASE sig_x; DROP DATABASE sig_x   (procsignal barriers)
//!    2. pg_log_backend_memory_contexts(walsender pid) (a procsignal to each walsender)
//!    3. pg_reload_conf()                              (SIGHUP)
//!    4. CREATE TABLE tmp_n (); DROP TABLE tmp_n  x500  (sinval traffic, catch-up interrupts)
//!    5. CHECKPOINT
//!  then: standby1 down, a walsender held, pg_ctl stop -m fast of the primary
//! ```
//! docs/design.md invariant 9: a session that does not use the library sees no
//! signal, barrier or reload that ends or delays it; a logical walsender held
//! for the standbys is such a session as far as other backends' signals go.
//! After each step the same walsender pids stream on, no consumer reconnected,
//! the primary logged no "walsender stops while it waits", and in the end each
//! consumer has every row exactly once. docs/design.md invariant 7: while standby1
//! is down no consumer gets a row it lacks, whatever signal arrives; and a
//! real shutdown still ends a held walsender at once, without sending the row
//! it holds.

mod common;
use common::*;
use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The logical walsenders of the two consumers, by application_name.
const WALSENDERS: &str =
    "SELECT string_agg(application_name || '=' || pid, ',' ORDER BY application_name)
   FROM pg_stat_replication WHERE application_name IN ('pg_recvlogical', 'sub')";

const FATAL_WAIT: &str = "walsender stops while it waits";

/// Runs `sql` in `postgres` on `node`; fails if it takes longer than `limit` (a step must not hang).
fn sql_within(node: &Node, sql: &str, limit: Duration) -> String {
    let started = Instant::now();
    let handle = sql_in_thread(node.port, sql);
    while !handle.is_finished() {
        assert!(
            started.elapsed() < limit,
            "on {}: {sql:?} did not finish in {limit:?}\n{}",
            node.name,
            node.log_tail()
        );
        sleep(Duration::from_millis(50));
    }
    handle
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("on {}: {sql}\n{e}\n{}", node.name, node.log_tail()))
}

/// The two consumers and what they must keep: their walsenders' pids, no
/// reconnect, no walsender ended by the library.
struct Consumers<'a> {
    primary: &'a Node,
    subscriber: &'a Node,
    receiver: Receiver,
    out: PathBuf,
    /// "pg_recvlogical=PID,sub=PID" as first recorded.
    pids: String,
    primary_log: usize,
    subscriber_log: usize,
}

impl Consumers<'_> {
    fn pid_list(&self) -> String {
        self.pids
            .split(',')
            .map(|p| p.split('=').nth(1).unwrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn received(&self) -> Vec<i64> {
        inserted_ids(&fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Fails at once if a walsender of either consumer was ended or replaced.
    fn assert_intact(&mut self, what: &str) {
        let log = self.primary.log_since(self.primary_log);
        if let Some(line) = log.lines().find(|l| l.contains(FATAL_WAIT)) {
            panic!(
                "{what}: the library ended a logical walsender:\n  {line}\n--- primary log since the consumers started ---\n{}",
                tail_of(&log)
            );
        }
        assert!(
            self.receiver.running(),
            "{what}: pg_recvlogical lost its walsender\n--- primary log since the consumers started ---\n{}",
            tail_of(&log)
        );
        let now = self.primary.sql(WALSENDERS);
        assert_eq!(
            now,
            self.pids,
            "{what}: the logical walsenders are not the ones recorded\n--- primary log since the consumers started ---\n{}",
            tail_of(&log)
        );
        let restarts = log
            .lines()
            .filter(|l| l.contains("starting logical decoding for slot"))
            .collect::<Vec<_>>();
        assert!(
            restarts.is_empty(),
            "{what}: a consumer reconnected: {restarts:#?}"
        );
        let sub_log = self.subscriber.log_since(self.subscriber_log);
        let sub_restarts = sub_log
            .lines()
            .filter(|l| {
                l.contains("apply worker for subscription \"sub\" has started")
                    || l.contains("could not receive data from WAL stream")
            })
            .collect::<Vec<_>>();
        assert!(
            sub_restarts.is_empty(),
            "{what}: the subscription lost its connection: {sub_restarts:#?}"
        );
    }

    /// Standby up: waits (bounded) until both consumers have the newest row
    /// committed now, through the same walsenders all along.
    fn assert_streaming(&mut self, what: &str) {
        let newest: i64 = self
            .primary
            .sql("SELECT max(id) FROM t")
            .parse()
            .expect("rows in t");
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_intact(what);
            let sub_has = self
                .subscriber
                .sql(&format!("SELECT count(*) FROM t WHERE id = {newest}"))
                == "1";
            if sub_has && self.received().contains(&newest) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: row {newest} did not reach both consumers in {DEADLINE:?} (subscriber: {sub_has})\n{}",
                self.primary.log_tail()
            );
            sleep(Duration::from_millis(100));
        }
        self.assert_intact(what);
    }

    /// Standby down: both walsenders are seen waiting in the library
    /// (bounded poll), and no consumer has a row committed after the standby
    /// stopped (ids above `before_stop`).
    fn assert_held(&mut self, what: &str, before_stop: i64) {
        let pids = self.pid_list();
        let mut seen_waiting = std::collections::BTreeSet::new();
        let deadline = Instant::now() + DEADLINE;
        while seen_waiting.len() < 2 {
            self.assert_intact(what);
            for pid in self
                .primary
                .sql(&format!(
                    "SELECT pid FROM pg_stat_activity
                      WHERE pid IN ({pids}) AND wait_event_type = 'Extension'"
                ))
                .lines()
            {
                seen_waiting.insert(pid.to_string());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the walsenders {pids} were not seen held for the standby (seen: {seen_waiting:?})"
            );
            sleep(Duration::from_millis(50));
        }
        self.assert_intact(what);
        let leaked = self
            .subscriber
            .sql(&format!("SELECT count(*) FROM t WHERE id > {before_stop}"));
        assert_eq!(
            leaked, "0",
            "{what}: the subscriber got rows the stopped standby lacks"
        );
        let leaked: Vec<i64> = self
            .received()
            .into_iter()
            .filter(|id| *id > before_stop)
            .collect();
        assert!(
            leaked.is_empty(),
            "{what}: pg_recvlogical got rows the stopped standby lacks: {leaked:?}"
        );
    }
}

fn tail_of(text: &str) -> String {
    let mut start = text.len().saturating_sub(6000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// One step: what it sends, run against the primary with the walsenders' pids.
type Step = (&'static str, fn(&Node, &str));

fn create_drop_database(primary: &Node, _pids: &str) {
    for _ in 0..3 {
        sql_within(primary, "CREATE DATABASE sig_x", Duration::from_secs(60));
        sql_within(primary, "DROP DATABASE sig_x", Duration::from_secs(60));
    }
}

fn log_memory_contexts(primary: &Node, pids: &str) {
    let offset = primary.log_offset();
    for pid in pids.split(',') {
        assert_eq!(
            sql_within(
                primary,
                &format!("SELECT pg_log_backend_memory_contexts({pid})"),
                Duration::from_secs(30)
            ),
            "t"
        );
    }
    // The walsenders handled the signal (also while held).
    for pid in pids.split(',') {
        primary.wait_for_log(&format!("logging memory contexts of PID {pid}"), offset);
    }
}

fn reload(primary: &Node, _pids: &str) {
    assert_eq!(
        sql_within(primary, "SELECT pg_reload_conf()", Duration::from_secs(30)),
        "t"
    );
}

fn sinval_traffic(primary: &Node, _pids: &str) {
    sql_within(
        primary,
        "DO $$ BEGIN FOR i IN 1..500 LOOP
           EXECUTE format('CREATE TABLE tmp_%s ()', i);
           EXECUTE format('DROP TABLE tmp_%s', i);
           COMMIT;
         END LOOP; END $$",
        Duration::from_secs(120),
    );
}

fn checkpoint(primary: &Node, _pids: &str) {
    sql_within(primary, "CHECKPOINT", Duration::from_secs(60));
}

#[test]
fn signals_do_not_end_logical_walsenders() {
    let dir = TestDir::new("walsender_signals");
    let (primary, standby) = primary_holding_for_standby1(&dir);

    primary.sql("SELECT pg_create_logical_replication_slot('recv', 'test_decoding')");
    let out = dir.path.join("recv.out");
    let receiver = Receiver::start(&primary, "recv", &out);
    let subscriber = subscriber_of(&dir, &primary);
    subscriber.poll_query_until(
        "SELECT count(*) FILTER (WHERE srsubstate = 'r') || '/' || count(*) FROM pg_subscription_rel",
        "1/1",
    );
    primary.poll_query_until(
        "SELECT count(*) FROM pg_stat_replication
          WHERE application_name IN ('pg_recvlogical', 'sub') AND state = 'streaming'",
        "2",
    );

    let mut writer = Writer::start(&primary, 1);
    let mut consumers = Consumers {
        primary: &primary,
        subscriber: &subscriber,
        receiver,
        out,
        pids: primary.sql(WALSENDERS),
        primary_log: primary.log_offset(),
        subscriber_log: subscriber.log_offset(),
    };
    eprintln!("logical walsenders: {}", consumers.pids);
    assert_eq!(consumers.pids.split(',').count(), 2, "{}", consumers.pids);
    // Under load, before any step: the check itself holds.
    primary.poll_query_until("SELECT count(*) >= 20 FROM t", "t");
    consumers.assert_streaming("under load, before any step");

    let steps: [Step; 5] = [
        ("CREATE DATABASE / DROP DATABASE", create_drop_database),
        ("pg_log_backend_memory_contexts", log_memory_contexts),
        ("pg_reload_conf", reload),
        ("CREATE TABLE / DROP TABLE x500", sinval_traffic),
        ("CHECKPOINT", checkpoint),
    ];
    for (name, step) in steps {
        let pids = consumers.pid_list();

        // While the walsenders stream.
        let started = Instant::now();
        step(&primary, &pids);
        eprintln!("{name}, standby up: {:?}", started.elapsed());
        consumers.assert_streaming(&format!("after {name} (standby up)"));

        // While they are held for the standby.
        standby.stop();
        let before_stop: i64 = primary.sql("SELECT max(id) FROM t").parse().unwrap();
        consumers.assert_held(&format!("before {name} (standby down)"), before_stop);
        let started = Instant::now();
        step(&primary, &pids);
        eprintln!("{name}, standby down: {:?}", started.elapsed());
        consumers.assert_held(&format!("after {name} (standby down)"), before_stop);
        standby.start();
        consumers.assert_streaming(&format!("after {name} (standby back)"));
    }

    // Every row, exactly once, through the same walsenders.
    writer.stop();
    let expected = table_ids(&primary, "postgres");
    consumers.assert_streaming("with the load stopped");
    assert_exactly_once(&consumers.received(), &expected, "pg_recvlogical");
    assert_exactly_once(
        &table_ids(&subscriber, "postgres"),
        &expected,
        "the subscriber",
    );
    eprintln!("{} rows, each received once by both", expected.len());

    // A real shutdown still ends a held walsender, promptly, without sending
    // what it holds.
    standby.stop();
    let held_id = expected.last().copied().unwrap_or(0) + 1_000_000;
    primary.sql(&format!(
        "INSERT INTO t VALUES ({held_id}, 'held at shutdown')"
    ));
    consumers.assert_held("a row inserted with the standby down", held_id - 1);
    let datadir = primary.datadir.clone();
    let started = Instant::now();
    let stopper = std::thread::spawn(move || {
        pg_command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-t", "300", "-D"])
            .arg(&datadir)
            .output()
    });
    let limit = Duration::from_secs(60);
    while !stopper.is_finished() {
        assert!(
            started.elapsed() < limit,
            "pg_ctl stop -m fast of the primary did not finish in {limit:?} with a walsender held\n{}",
            primary.log_tail()
        );
        sleep(Duration::from_millis(100));
    }
    let stopped = stopper.join().unwrap().expect("run pg_ctl stop");
    assert!(
        stopped.status.success(),
        "pg_ctl stop failed: {}{}",
        String::from_utf8_lossy(&stopped.stdout),
        String::from_utf8_lossy(&stopped.stderr)
    );
    eprintln!(
        "primary stopped in {:?} with a walsender held",
        started.elapsed()
    );
    let deadline = Instant::now() + DEADLINE;
    while consumers.receiver.running() {
        assert!(
            Instant::now() < deadline,
            "pg_recvlogical still runs after the primary stopped"
        );
        sleep(Duration::from_millis(100));
    }
    assert!(
        !consumers.received().contains(&held_id),
        "pg_recvlogical got row {held_id}, which the stopped standby lacks, at shutdown"
    );
    assert_eq!(
        subscriber.sql(&format!("SELECT count(*) FROM t WHERE id = {held_id}")),
        "0",
        "the subscriber got row {held_id}, which the stopped standby lacks, at shutdown"
    );
}
