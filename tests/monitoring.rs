//! # The monitoring queries give the right values through the real exporter
//!
//! ```text
//!  primary ──▶ standby1          prometheus-postgres-exporter (Debian's, run as the postgres user)
//!    slot mon_slot (copied)        --extend.query-path=monitoring/postgres_exporter/queries.yaml
//!    slot held ◀── pg_recvlogical  one per server and role, on loopback; /metrics read over TCP
//! ```
//! Every exporter connects as `mon`, a role with `pg_monitor` and nothing
//! else: the extension grants `pg_monitor` the status view. On the standby:
//! the copy of `mon_slot` is `ready` 1, in state `synced`, with no lag, a
//! fresh verdict (`verdict_age_seconds`) renewed by a pass (`from_disk` 0);
//! one worker, syncing. On the primary: no copies, the worker idle. In a
//! database without the extension the server-level query still works
//! (`extension_present` 0, `status_view_readable` 0, the worker seen) and
//! the per-copy series are absent: their queries fail there, and the only
//! ERROR they cause is that the view does not exist. With
//! `standby_slot_names = 'standby1'` and the standby stopped, the walsender
//! of `held` shows `held` 1 with WAL unsent, and the named standby's slot
//! inactive; started again, it is released. Last, with the primary gone and
//! the standby restarted, the copy is ready `from_disk` 1 with a verdict as
//! old as the last pass before the primary went.
//! The exporter is a test prerequisite (`scripts/test` installs it): the
//! test fails when it is missing.

mod common;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
const STATES: [&str; 6] = [
    "synced",
    "waiting_for_remote",
    "waiting_for_wal",
    "waiting_for_feedback",
    "invalidated",
    "error",
];

/// The id of an OS user, from `id`.
fn os_id(flag: &str, user: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no OS user {user}"))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// One prometheus-postgres-exporter on a loopback port; killed when dropped.
struct Exporter {
    name: String,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Exporter {
    /// Starts the exporter for the libpq `conninfo` with the repository's
    /// queries file, and waits until it answers.
    fn start(dir: &TestDir, name: &str, conninfo: &str, queries: &Path) -> Exporter {
        assert!(
            Path::new(EXPORTER).exists(),
            "{EXPORTER} is missing: apt-get install prometheus-postgres-exporter (scripts/test installs it)"
        );
        let port = free_port();
        let log = dir.path.join(format!("exporter-{name}.log"));
        let logfile = fs::File::create(&log).expect("create the exporter's log");
        let mut cmd = Command::new(EXPORTER);
        cmd.arg(format!("--extend.query-path={}", queries.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .env("DATA_SOURCE_NAME", format!("{conninfo} sslmode=disable"))
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("dup log"))
            .stderr(logfile);
        // As the unprivileged user the servers run as, never as root.
        if is_root() {
            use std::os::unix::process::CommandExt;
            cmd.uid(os_id("-u", OS_USER)).gid(os_id("-g", OS_USER));
        }
        let child = cmd.spawn().expect("start prometheus-postgres-exporter");
        let mut exporter = Exporter {
            name: name.to_string(),
            port,
            log,
            child,
        };
        let deadline = Instant::now() + DEADLINE;
        while exporter.try_scrape().is_err() {
            if let Ok(Some(status)) = exporter.child.try_wait() {
                panic!(
                    "exporter {name} exited ({status}):\n{}",
                    exporter.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "exporter {name} does not answer on 127.0.0.1:{port}:\n{}",
                exporter.log_tail()
            );
            sleep(Duration::from_millis(100));
        }
        exporter
    }

    /// GET /metrics: the body, or why not.
    fn try_scrape(&self) -> Result<String, String> {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP header end in {response:?}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("HTTP answer {head:?}"));
        }
        Ok(body.to_string())
    }

    fn scrape(&self) -> String {
        self.try_scrape().unwrap_or_else(|e| {
            panic!("scrape of exporter {}: {e}\n{}", self.name, self.log_tail())
        })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Scrapes until `metric` with `labels` has a value that `ok` accepts;
    /// fails at the deadline with what the metric last showed, the
    /// exporter's log and the server's.
    fn wait_for(
        &self,
        node: &Node,
        metric: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
        what: &str,
    ) -> f64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let body = self.scrape();
            if let Some(v) = value(&body, metric, labels) {
                if ok(v) {
                    return v;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "exporter {}: timed out after {DEADLINE:?} waiting for {what}; {metric} shows:\n{}\n--- exporter log ---\n{}\n--- log of {} ---\n{}",
                    self.name,
                    lines_of(&body, metric),
                    self.log_tail(),
                    node.name,
                    node.log_tail()
                );
            }
            sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The samples of `metric` (exact name) in an exposition body: (labels, value).
fn samples<'a>(body: &'a str, metric: &str) -> Vec<(&'a str, &'a str)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (name == metric).then_some((labels, v))
        })
        .collect()
}

/// The value of the one sample of `metric` that has all of `labels`.
fn value(body: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = samples(body, metric)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{metric} {labels:?} matches several series: {matching:?}"
    );
    matching.first().map(|(_, v)| v.parse().expect("a number"))
}

fn lines_of(body: &str, metric: &str) -> String {
    let lines: Vec<String> = samples(body, metric)
        .iter()
        .map(|(l, v)| format!("  {metric}{{{l}}} {v}"))
        .collect();
    if lines.is_empty() {
        "  (no sample)".into()
    } else {
        lines.join("\n")
    }
}

/// Fails unless `metric` with `labels` is exactly `expected` in `body`.
fn assert_value(body: &str, metric: &str, labels: &[(&str, &str)], expected: f64) {
    let got = value(body, metric, labels);
    assert_eq!(
        got,
        Some(expected),
        "{metric} {labels:?}; the exporter shows:\n{}",
        lines_of(body, metric)
    );
}

/// The ERRORs in the server's log, from `offset`, raised by one of the
/// queries file's statements (the entry, ERROR line and the two after it,
/// names the extension).
fn errors_from_our_queries(node: &Node, offset: usize) -> Vec<String> {
    let log = node.log_since(offset);
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("ERROR:"))
        .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n"))
        .filter(|entry| entry.contains("sync_logical_slot"))
        .collect()
}

/// A libpq connection string for the `pg_monitor` role `mon`.
fn as_mon(node: &Node, db: &str) -> String {
    format!("host=127.0.0.1 port={} user=mon dbname={db}", node.port)
}

/// The per-copy metrics: none may appear where the view cannot be read.
const PER_COPY: [&str; 6] = [
    "sync_logical_slot_copy_ready",
    "sync_logical_slot_copy_state",
    "sync_logical_slot_copy_lag_bytes",
    "sync_logical_slot_copy_seconds_since_sync",
    "sync_logical_slot_copy_verdict_age_seconds",
    "sync_logical_slot_copy_from_disk",
];

/// The server-level metrics of a standby whose worker syncs: `extension`
/// 1 where the extension (and so the view) is in the exporter's database.
fn assert_standby_server(body: &str, extension: f64) {
    for (metric, v) in [
        ("sync_logical_slot_server_in_recovery", 1.0),
        ("sync_logical_slot_server_library_loaded", 1.0),
        ("sync_logical_slot_server_extension_present", extension),
        ("sync_logical_slot_server_status_view_readable", extension),
        ("sync_logical_slot_server_workers", 1.0),
        ("pg_exporter_user_queries_load_error", 0.0),
    ] {
        assert_value(body, metric, &[], v);
    }
    assert_value(
        body,
        "sync_logical_slot_worker_processes",
        &[("activity", "syncing")],
        1.0,
    );
}

#[test]
fn exporter_shows_copies_workers_and_held_consumers() {
    let dir = TestDir::new("monitoring");
    let (primary, standby) = primary_and_standby(&dir);
    primary.sql("SELECT pg_create_logical_replication_slot('mon_slot', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (1, 'a')");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('mon_slot', NULL, NULL)");
    // pg_monitor and nothing else: the extension grants it the status view.
    primary.sql("CREATE ROLE mon LOGIN IN ROLE pg_monitor");
    primary.sql("CREATE DATABASE other");
    wait_for_copy(&standby, &primary, "mon_slot");
    standby.wait_for_catchup(&primary);

    // The repository's file, where the exporter's user can read it.
    let queries = dir.path.join("queries.yaml");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/postgres_exporter/queries.yaml"),
        &queries,
    )
    .expect("copy queries.yaml");
    let standby_log = standby.log_offset();
    let primary_log = primary.log_offset();
    let on_standby = Exporter::start(&dir, "standby1", &as_mon(&standby, "postgres"), &queries);
    let on_primary = Exporter::start(&dir, "primary", &as_mon(&primary, "postgres"), &queries);

    // The standby: the copy, ready and synced, no lag, its verdict just
    // renewed by a pass.
    let copy = [
        ("slot_name", "mon_slot"),
        ("database", "postgres"),
        ("plugin", "test_decoding"),
    ];
    on_standby.wait_for(
        &standby,
        "sync_logical_slot_copy_ready",
        &copy,
        |v| v == 1.0,
        "the copy of mon_slot ready",
    );
    let body = on_standby.scrape();
    for state in STATES {
        assert_value(
            &body,
            "sync_logical_slot_copy_state",
            &[("slot_name", "mon_slot"), ("state", state)],
            if state == "synced" { 1.0 } else { 0.0 },
        );
    }
    assert_value(&body, "sync_logical_slot_copy_lag_bytes", &copy, 0.0);
    assert_value(&body, "sync_logical_slot_copy_from_disk", &copy, 0.0);
    for metric in [
        "sync_logical_slot_copy_seconds_since_sync",
        "sync_logical_slot_copy_verdict_age_seconds",
    ] {
        let age = value(&body, metric, &copy).unwrap_or_else(|| panic!("{metric} of mon_slot"));
        assert!(
            (0.0..30.0).contains(&age),
            "{metric} of a synced copy is {age}"
        );
    }
    assert_standby_server(&body, 1.0);
    assert!(samples(&body, "sync_logical_slot_walsender_held").is_empty());
    println!(
        "standby1's exporter (role mon, pg_monitor only):\n{}\n{}\n{}",
        lines_of(&body, "sync_logical_slot_copy_ready"),
        lines_of(&body, "sync_logical_slot_copy_verdict_age_seconds"),
        lines_of(&body, "sync_logical_slot_copy_from_disk")
    );

    // The primary: no copies, its worker idle.
    let body = on_primary.scrape();
    assert_value(&body, "sync_logical_slot_server_in_recovery", &[], 0.0);
    assert_value(
        &body,
        "sync_logical_slot_server_status_view_readable",
        &[],
        1.0,
    );
    assert_value(&body, "sync_logical_slot_server_workers", &[], 1.0);
    assert_value(
        &body,
        "sync_logical_slot_worker_processes",
        &[("activity", "not_standby")],
        1.0,
    );
    assert!(
        samples(&body, "sync_logical_slot_copy_ready").is_empty(),
        "copies on a primary: {}",
        lines_of(&body, "sync_logical_slot_copy_ready")
    );
    let errors = errors_from_our_queries(&standby, standby_log);
    assert!(
        errors.is_empty(),
        "a monitoring query failed on standby1:\n{}",
        errors.join("\n")
    );

    // An exporter pointed at a database without the extension: the
    // server-level query still answers, the per-copy queries fail (the view
    // does not exist there), so their series are absent.
    let standby_log = standby.log_offset();
    let elsewhere = Exporter::start(
        &dir,
        "standby1-other-db",
        &as_mon(&standby, "other"),
        &queries,
    );
    // Two scrapes: the second runs the queries again.
    elsewhere.scrape();
    let body = elsewhere.scrape();
    assert_standby_server(&body, 0.0);
    for metric in PER_COPY {
        assert!(
            samples(&body, metric).is_empty(),
            "{metric} without the view: {}",
            lines_of(&body, metric)
        );
    }
    let errors = errors_from_our_queries(&standby, standby_log);
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|e| e.contains("relation \"sync_logical_slot_status\" does not exist")),
        "in a database without the extension, the per-copy queries must fail on the missing view, and nothing else may fail; the server logged:\n{}",
        errors.join("\n")
    );
    println!(
        "a database without the extension: {} ERRORs from the per-copy queries, e.g.\n{}\nthe exporter logged:\n{}",
        errors.len(),
        errors[0],
        elsewhere
            .log_tail()
            .lines()
            .filter(|l| l.contains("sync_logical_slot"))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(elsewhere);

    // A consumer held by standby_slot_names while the standby is down.
    primary.sql("ALTER SYSTEM SET sync_logical_slot.standby_slot_names = 'standby1'");
    primary.reload();
    primary.sql("SELECT pg_create_logical_replication_slot('held', 'test_decoding')");
    let _receiver = Receiver::start(&primary, "held", &dir.path.join("held.out"));
    let held = [
        ("slot_name", "held"),
        ("application_name", "pg_recvlogical"),
    ];
    on_primary.wait_for(
        &primary,
        "sync_logical_slot_walsender_held",
        &held,
        |v| v == 0.0,
        "pg_recvlogical streaming from held, not held",
    );
    assert_value(
        &on_primary.scrape(),
        "sync_logical_slot_standby_slot_active",
        &[("slot_name", "standby1")],
        1.0,
    );
    standby.stop();
    primary.sql("INSERT INTO t VALUES (2, 'b')");
    on_primary.wait_for(
        &primary,
        "sync_logical_slot_walsender_held",
        &held,
        |v| v == 1.0,
        "the walsender of held held for standby1",
    );
    let body = on_primary.scrape();
    let unsent = value(&body, "sync_logical_slot_walsender_unsent_bytes", &held)
        .expect("unsent_bytes of held");
    assert!(unsent > 0.0, "a held walsender with {unsent} bytes unsent");
    assert_value(
        &body,
        "sync_logical_slot_standby_slot_present",
        &[("slot_name", "standby1")],
        1.0,
    );
    assert_value(
        &body,
        "sync_logical_slot_standby_slot_active",
        &[("slot_name", "standby1")],
        0.0,
    );
    let sent = value(&body, "sync_logical_slot_walsender_sent_lsn", &held).expect("sent_lsn");
    sleep(Duration::from_secs(2));
    let body = on_primary.scrape();
    assert_value(&body, "sync_logical_slot_walsender_held", &held, 1.0);
    assert_value(&body, "sync_logical_slot_walsender_sent_lsn", &held, sent);
    println!(
        "primary's exporter, standby1 down:\n{}\n{}",
        lines_of(&body, "sync_logical_slot_walsender_held"),
        lines_of(&body, "sync_logical_slot_walsender_unsent_bytes")
    );

    // The standby is back: the consumer is released.
    standby.start();
    on_primary.wait_for(
        &primary,
        "sync_logical_slot_walsender_held",
        &held,
        |v| v == 0.0,
        "the walsender of held released once standby1 is back",
    );
    let errors = errors_from_our_queries(&primary, primary_log);
    assert!(
        errors.is_empty(),
        "a monitoring query failed on the primary:\n{}",
        errors.join("\n")
    );

    // The primary gone and the standby restarted: the copy is ready from
    // the record kept with it, and its verdict ages from the last pass that
    // reached the primary.
    on_standby.wait_for(
        &standby,
        "sync_logical_slot_copy_from_disk",
        &copy,
        |v| v == 0.0,
        "the restarted standby's passes to renew the verdict of mon_slot",
    );
    on_standby.wait_for(
        &standby,
        "sync_logical_slot_copy_ready",
        &copy,
        |v| v == 1.0,
        "the copy of mon_slot ready again",
    );
    drop(on_primary);
    primary.kill9();
    standby.restart();
    on_standby.wait_for(
        &standby,
        "sync_logical_slot_copy_from_disk",
        &copy,
        |v| v == 1.0,
        "the copy of mon_slot's verdict read from disk",
    );
    let first = on_standby.scrape();
    assert_value(&first, "sync_logical_slot_copy_ready", &copy, 1.0);
    let age = value(&first, "sync_logical_slot_copy_verdict_age_seconds", &copy)
        .expect("verdict_age_seconds of mon_slot");
    sleep(Duration::from_secs(2));
    let later = on_standby.scrape();
    let age_later = value(&later, "sync_logical_slot_copy_verdict_age_seconds", &copy)
        .expect("verdict_age_seconds of mon_slot");
    assert!(
        age_later >= age + 1.5,
        "a verdict from disk is not renewed while the primary is gone: its age went from {age} to {age_later}"
    );
    println!(
        "standby1's exporter, its primary gone, restarted:\n{}\n{}",
        lines_of(&later, "sync_logical_slot_copy_from_disk"),
        lines_of(&later, "sync_logical_slot_copy_verdict_age_seconds")
    );
}
