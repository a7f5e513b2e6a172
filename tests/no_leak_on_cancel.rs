//! # No leak on cancel: 300 interrupted connection attempts cost nothing
//!
//! ```text
//!  primary ──streaming──▶ standby1
//!                           │ sync worker, sync_logical_slot.primary_conninfo =
//!                           │   'host=127.0.0.1 port=<hole> connect_timeout=3600'
//!                           ▼
//!                         black hole (this test: accepts, reads, never answers)
//!
//!  x300: pg_reload_conf() on standby1 while the worker waits in its attempt
//!        (every 10th round first a sync_logical_slot_sync_now(), SIGUSR2 and
//!        latch to the worker mid-attempt; the session gives up after 300 ms)
//! ```
//! A reload ends the worker's attempt, and it connects anew.
//! When that ending was an ERROR raised inside libpqwalreceiver's connect,
//! each attempt left its socket and libpq connection behind (measured: +280
//! fds, +7.3 MB, +544 B of TopMemoryContext per round); the worker now opens
//! its connection itself (src/connect.c) and closes a given-up attempt. The
//! attempt that was cut short must leave nothing behind: after 20 rounds of
//! warm-up and again after 280 more, the worker (the same process) holds at
//! most one connection to the black hole, as many file descriptors as before
//! (+2), and about as much memory: its anonymous (heap) memory (+1 MiB)
//! and the bytes in use in its memory contexts, as PostgreSQL counts them
//! (pg_log_backend_memory_contexts, +8 kB). One leaked libpq connection
//! per round is at least a socket and a PGconn with its 16 kB buffers
//! (malloc), so 280 rounds would show hundreds of sockets and megabytes.

mod common;
use common::*;
use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

const WARMUP: usize = 20;
const ROUNDS: usize = 300;
/// Every this many rounds, a session asks for a pass during the attempt.
const SYNC_NOW_EVERY: usize = 10;
/// File descriptors the worker may gain over the measured rounds.
const FD_SLACK: i64 = 2;
/// Growth of the worker's anonymous memory (RssAnon) allowed over the
/// measured rounds: 1 MiB is under 4 kB a round, less than one page per
/// interrupted attempt, while a leaked PGconn alone touches more than that.
/// What is left is malloc's and the allocator's noise, well under 1 MiB.
const ANON_SLACK_KB: i64 = 1024;
/// Growth of the bytes in use in the worker's memory contexts (the "used"
/// of PostgreSQL's "Grand total") allowed over the measured rounds: 8 kB,
/// under 30 bytes a round. Reloads that start no connection attempt leave
/// it unchanged to the byte; even the smallest palloc left per attempt in
/// a long-lived context (libpqwalreceiver's 24-byte WalReceiverConn takes
/// 48 bytes with its chunk header) shows above it.
const CONTEXTS_USED_SLACK: i64 = 8 * 1024;
/// How long one round may take to see the worker's next attempt arrive.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// How long all the rounds together may take.
const ALL_ROUNDS_DEADLINE: Duration = Duration::from_secs(600);

/// A connection accepted by the black hole.
struct Accepted {
    stream: TcpStream,
    /// The client sent something (libpq's first packet): it now waits for an answer.
    got_bytes: bool,
    /// The client closed it.
    closed: bool,
}

impl Accepted {
    /// Reads what the client sent; notices when it closed its end.
    fn poll(&mut self) {
        let mut buf = [0u8; 1024];
        while !self.closed {
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(_) => self.got_bytes = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => self.closed = true,
            }
        }
    }
}

/// A "primary" on loopback that accepts TCP connections and never answers:
/// every attempt to it waits until cut short (or connect_timeout).
struct BlackHole {
    port: u16,
    conns: Arc<Mutex<Vec<Accepted>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the black hole");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (conns.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(true).unwrap();
                        c.lock().unwrap().push(Accepted {
                            stream,
                            got_bytes: false,
                            closed: false,
                        });
                    }
                    Err(_) => sleep(Duration::from_millis(2)),
                }
            }
        });
        BlackHole {
            port,
            conns,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Waits until more than `before` connections came in and the last one
    /// sent its first packet: a fresh attempt now waits for an answer.
    fn wait_for_attempt_after(&self, before: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            {
                let mut conns = self.conns.lock().unwrap();
                if conns.len() > before {
                    let last = conns.last_mut().unwrap();
                    last.poll();
                    if last.got_bytes {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < until,
                "no fresh connection attempt reached the black hole within {deadline:?} ({} accepted so far, {before} before)",
                self.accepted()
            );
            sleep(Duration::from_millis(2));
        }
    }

    /// Connections the client side still holds open.
    fn open(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        conns.iter_mut().for_each(Accepted::poll);
        conns.iter().filter(|c| !c.closed).count()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the worker holds at one moment.
#[derive(Debug)]
struct Sample {
    /// Its pg_stat_activity query and wait_event: in a connection attempt.
    activity: String,
    fds: usize,
    sockets: usize,
    /// Its TCP sockets connected (or connecting) to the black hole.
    to_hole: usize,
    /// Connections the black hole sees still open.
    hole_open: usize,
    rss_kb: i64,
    anon_kb: i64,
    /// PostgreSQL's "Grand total" of its memory contexts: allocated, used.
    contexts_total: i64,
    contexts_used: i64,
}

/// The targets of the links in /proc/<pid>/fd.
fn fd_targets(pid: &str) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// The socket inodes of the TCP (IPv4) connections whose remote port is `port`.
fn tcp_inodes_to(pid: &str, port: u16) -> HashSet<String> {
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() > 9 && cols[2].ends_with(&want)).then(|| cols[9].to_string())
        })
        .collect()
}

/// A `kB` field of /proc/<pid>/status.
fn status_kb(pid: &str, field: &str) -> i64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The worker's memory contexts as PostgreSQL counts them
/// (pg_log_backend_memory_contexts): "Grand total" allocated and used bytes.
fn memory_contexts(standby: &Node, pid: &str) -> (i64, i64) {
    let o = standby.log_offset();
    assert_eq!(
        standby.sql(&format!("SELECT pg_log_backend_memory_contexts({pid})")),
        "t"
    );
    let end = standby.wait_for_log("Grand total: ", o);
    let line = standby.log_since(end);
    let line = line.lines().next().unwrap_or_default();
    // "<total> bytes in <n> blocks; <free> free (<k> chunks); <used> used"
    let words: Vec<&str> = line.split_whitespace().collect();
    let total = words.first().and_then(|w| w.parse().ok());
    let used = words
        .iter()
        .position(|w| w.trim_end_matches(';') == "used")
        .and_then(|i| words.get(i - 1)?.parse().ok());
    match (total, used) {
        (Some(t), Some(u)) => (t, u),
        _ => panic!("cannot read the Grand total line: {line:?}"),
    }
}

fn sample(standby: &Node, pid: &str, hole: &BlackHole) -> Sample {
    // Measure while the worker is in an attempt.
    standby.poll_query_until(
        WORKER_ATTEMPTING,
        "connecting to the primary server|LibPQWalReceiverConnect",
    );
    let targets = fd_targets(pid);
    let sockets: HashSet<String> = targets
        .iter()
        .filter_map(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        .map(str::to_string)
        .collect();
    let to_hole = tcp_inodes_to(pid, hole.port).intersection(&sockets).count();
    let (contexts_total, contexts_used) = memory_contexts(standby, pid);
    Sample {
        activity: standby.sql(WORKER_ATTEMPTING),
        fds: targets.len(),
        sockets: sockets.len(),
        to_hole,
        hole_open: hole.open(),
        rss_kb: status_kb(pid, "VmRSS"),
        anon_kb: status_kb(pid, "RssAnon"),
        contexts_total,
        contexts_used,
    }
}

/// The worker waits in a connection attempt (libpqwalreceiver's connect wait).
const WORKER_ATTEMPTING: &str =
    "SELECT query || '|' || coalesce(wait_event, '') FROM pg_stat_activity
   WHERE backend_type = 'sync_logical_slot worker'";

#[test]
fn reloads_and_sync_now_during_connection_attempts_leak_nothing() {
    let started = Instant::now();
    let dir = TestDir::new("no_leak_on_cancel");
    let hole = BlackHole::start();
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    let standby = dir.standby("standby1", &primary);
    // An hour: no attempt ends on its own during the test, only when cut short.
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} connect_timeout=3600 dbname=postgres'",
        hole.port
    ));
    standby.start();
    standby.wait_for_catchup(&primary);
    hole.wait_for_attempt_after(0, DEADLINE);
    standby.poll_query_until(
        WORKER_ATTEMPTING,
        "connecting to the primary server|LibPQWalReceiverConnect",
    );
    let pid = standby.worker_pid();
    assert!(!pid.is_empty(), "no sync worker on the standby");

    // sync_now() during an attempt: the session gives up after 300 ms (the
    // worker answers a request once its attempt ends; only a reload ends it).
    let sync_now_session = "dbname=postgres options='-c statement_timeout=300'";
    let mut sync_now_errors = Vec::new();
    let mut before = None;
    let rounds_started = Instant::now();
    for round in 1..=ROUNDS {
        assert!(
            rounds_started.elapsed() < ALL_ROUNDS_DEADLINE,
            "{round} rounds took longer than {ALL_ROUNDS_DEADLINE:?}"
        );
        if round % SYNC_NOW_EVERY == 0 {
            match standby.try_sql_in(
                sync_now_session,
                "SELECT * FROM sync_logical_slot_sync_now()",
            ) {
                Ok(out) => panic!("sync_now() answered without a primary: {out}"),
                Err(e) => sync_now_errors.push(e),
            }
        }
        let n = hole.accepted();
        standby.reload();
        hole.wait_for_attempt_after(n, ROUND_DEADLINE);
        if round == WARMUP {
            let s = sample(&standby, &pid, &hole);
            eprintln!("after {WARMUP} rounds (warm-up): {s:?}");
            before = Some(s);
        }
    }
    let rounds_took = rounds_started.elapsed();
    let before = before.expect("warm-up sample");
    let after = sample(&standby, &pid, &hole);
    eprintln!("after {ROUNDS} rounds: {after:?}");
    let measured = (ROUNDS - WARMUP) as i64;
    let fd_growth = after.fds as i64 - before.fds as i64;
    let anon_growth = after.anon_kb - before.anon_kb;
    let rss_growth = after.rss_kb - before.rss_kb;
    let ctx_growth = after.contexts_total - before.contexts_total;
    let used_growth = after.contexts_used - before.contexts_used;
    eprintln!(
        "over {measured} rounds: fds {fd_growth:+}, sockets {:+}, RssAnon {anon_growth:+} kB ({:+.2} kB/round), \
         VmRSS {rss_growth:+} kB, memory contexts used {used_growth:+} B ({:+.0} B/round), allocated {ctx_growth:+} B",
        after.sockets as i64 - before.sockets as i64,
        anon_growth as f64 / measured as f64,
        used_growth as f64 / measured as f64,
    );
    eprintln!(
        "{} connections accepted by the black hole, {} still open; {} sync_now() calls, first error: {:?}",
        hole.accepted(),
        after.hole_open,
        sync_now_errors.len(),
        sync_now_errors.first()
    );
    eprintln!(
        "{ROUNDS} rounds took {rounds_took:?}; the test so far {:?}",
        started.elapsed()
    );

    for e in &sync_now_errors {
        assert!(
            e.contains("statement timeout")
                || e.contains("did not complete")
                || e.contains("did not answer"),
            "sync_now() failed otherwise than expected: {e}"
        );
    }
    assert_eq!(
        standby.worker_pid(),
        pid,
        "the worker restarted during the rounds\n{}",
        standby.log_tail()
    );
    assert!(
        hole.accepted() > ROUNDS,
        "each reload should have cut short a fresh attempt"
    );
    for s in [&before, &after] {
        assert!(
            s.activity.ends_with("|LibPQWalReceiverConnect"),
            "measured outside a connection attempt: {}",
            s.activity
        );
    }
    // Every finding at once: a leak usually shows in all of them.
    let mut leaks = Vec::new();
    if after.to_hole > 1 || after.hole_open > 1 {
        leaks.push(format!(
            "interrupted attempts leave connections open: the worker holds {} sockets to the black hole, \
             which sees {} of its {} connections still open",
            after.to_hole,
            after.hole_open,
            hole.accepted()
        ));
    }
    if fd_growth > FD_SLACK {
        leaks.push(format!(
            "the worker's file descriptors grew from {} to {} over {measured} rounds",
            before.fds, after.fds
        ));
    }
    if anon_growth > ANON_SLACK_KB {
        leaks.push(format!(
            "the worker's anonymous memory grew by {anon_growth} kB over {measured} rounds ({} -> {} kB)",
            before.anon_kb, after.anon_kb
        ));
    }
    if used_growth > CONTEXTS_USED_SLACK {
        leaks.push(format!(
            "the bytes in use in the worker's memory contexts grew by {used_growth} over {measured} rounds ({} -> {})",
            before.contexts_used, after.contexts_used
        ));
    }
    assert!(
        leaks.is_empty(),
        "cancelled connection attempts leak:\n  {}",
        leaks.join("\n  ")
    );
}
