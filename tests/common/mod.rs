//! A harness for real clusters on loopback, in the spirit of PostgreSQL's
//! `PostgreSQL::Test::Cluster`: init a primary, base-backup a streaming
//! standby, start/stop/restart/promote/kill -9, run SQL with psql, poll a
//! query until a deadline, wait for replay catch-up, wait for a log line.
//!
//! Every server lives in one temporary directory per test. When a `TestDir`
//! is dropped every server in it is stopped; if the test failed, the directory
//! (data and logs) is kept and its path printed.
//!
//! PostgreSQL refuses to run as root: when the test runs as root (as
//! `cargo pgrx test` and CI do), every PostgreSQL binary runs through
//! `runuser -u postgres` and the directory belongs to that user.
#![allow(dead_code)]

use std::cell::RefCell;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The worker's row in `pg_stat_activity`: its state is in `query`.
pub const WORKER_ACTIVITY: &str =
    "SELECT query FROM pg_stat_activity WHERE backend_type = 'sync_logical_slot worker'";
/// Connections that a sync worker (of any standby) holds on this server.
pub const CONNECTIONS_FROM_WORKERS: &str =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'";

/// How long any wait in a test may last before it fails.
pub const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);
pub const OS_USER: &str = "postgres";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("SLS_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config on PATH (apt install postgresql-server-dev-15)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A command for a PostgreSQL binary, run as the unprivileged user when we are root.
pub fn pg_command(program: &str) -> Command {
    os_user_command(bindir().join(program))
}

/// A command run as the unprivileged user when we are root (as this user otherwise).
pub fn os_user_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", OS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// psql to `db` on the server at `port`, quiet, stopping at the first error.
pub fn psql(port: u16, db: &str) -> Command {
    let mut c = pg_command("psql");
    c.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .args(["-p", &port.to_string(), "-d", db]);
    c
}

/// Runs SQL in `db` on the server at `port`: Ok(unaligned, tuples-only output) or Err(stderr).
pub fn run_sql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = psql(port, db)
        .args(["-A", "-t", "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// One test's directory; stops every server in it when dropped.
pub struct TestDir {
    pub path: PathBuf,
    nodes: RefCell<Vec<Rc<NodeState>>>,
}

struct NodeState {
    datadir: PathBuf,
    running: RefCell<bool>,
}

impl TestDir {
    pub fn new(test_name: &str) -> TestDir {
        let base = std::env::temp_dir();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = base.join(format!("sls-{test_name}-{}-{stamp}", std::process::id()));
        fs::create_dir_all(&path).expect("create test dir");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg(OS_USER).arg(&path);
                    c
                },
                "chown test dir",
            );
        }
        TestDir {
            path,
            nodes: RefCell::new(Vec::new()),
        }
    }

    /// A new primary: `initdb`, logical WAL, the extension preloaded.
    pub fn primary(&self, name: &str) -> Node {
        let node = self.node(name);
        node.initdb();
        node.append_conf(&format!(
            "port = {port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sock}'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 20
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
shared_preload_libraries = 'sync_logical_slot'
sync_logical_slot.naptime = 200ms
log_line_prefix = '%m [%p] %b '
log_min_messages = info
fsync = off
",
            port = node.port,
            sock = self.path.display()
        ));
        node
    }

    /// A streaming standby of `primary` from a base backup, with its own
    /// physical slot `name` on the primary (primary_slot_name).
    pub fn standby(&self, name: &str, primary: &Node) -> Node {
        let node = self.node(name);
        run(
            {
                let mut c = pg_command("pg_basebackup");
                c.args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-R",
                    "-C",
                ])
                .args(["-p", &primary.port.to_string(), "-S", name, "-D"])
                .arg(&node.datadir);
                c
            },
            &format!("pg_basebackup {name}"),
        );
        node.append_conf(&format!("port = {}\n", node.port));
        node
    }

    /// A plain cluster (no preload, no replication), e.g. a subscriber.
    pub fn plain(&self, name: &str) -> Node {
        let node = self.node(name);
        node.initdb();
        node.append_conf(&format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\nfsync = off\n",
            node.port,
            self.path.display()
        ));
        node
    }

    /// A new cluster, `initdb` and nothing more: its postgresql.conf is
    /// initdb's (no port yet: append one before starting it).
    pub fn initdb_only(&self, name: &str) -> Node {
        let node = self.node(name);
        node.initdb();
        node
    }

    /// A node whose data directory something else makes (e.g. a
    /// pg_basebackup that the test runs itself), on a port of its own.
    pub fn unmade(&self, name: &str) -> Node {
        self.node(name)
    }

    fn node(&self, name: &str) -> Node {
        let state = Rc::new(NodeState {
            datadir: self.path.join(name),
            running: RefCell::new(false),
        });
        self.nodes.borrow_mut().push(state.clone());
        Node {
            name: name.to_string(),
            port: free_port(),
            datadir: state.datadir.clone(),
            logfile: self.path.join(format!("{name}.log")),
            state,
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for n in self.nodes.borrow().iter() {
            if *n.running.borrow() {
                let _ = pg_command("pg_ctl")
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(&n.datadir)
                    .output();
            }
        }
        if std::thread::panicking() || std::env::var_os("SLS_KEEP_TEST_DIRS").is_some() {
            eprintln!(
                "test failed: data directories and server logs kept in {}",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub struct Node {
    pub name: String,
    pub port: u16,
    pub datadir: PathBuf,
    pub logfile: PathBuf,
    state: Rc<NodeState>,
}

impl Node {
    /// The pid of this server's sync worker.
    pub fn worker_pid(&self) -> String {
        self.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'sync_logical_slot worker'")
    }

    /// A new cluster in this node's directory; only the `postgres` role, trusted locally.
    fn initdb(&self) {
        run(
            {
                let mut c = pg_command("initdb");
                c.args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-N",
                    "--no-instructions",
                    "-D",
                ])
                .arg(&self.datadir);
                c
            },
            &format!("initdb {}", self.name),
        );
    }

    pub fn append_conf(&self, text: &str) {
        let conf = self.datadir.join("postgresql.conf");
        let mut current = fs::read_to_string(&conf).expect("read postgresql.conf");
        current.push('\n');
        current.push_str(text);
        current.push('\n');
        fs::write(&conf, current).expect("write postgresql.conf");
    }

    /// Sets `key` in postgresql.auto.conf (where pg_basebackup -R writes the
    /// standby's settings, and which wins over postgresql.conf); empty `value` removes it.
    pub fn set_auto_conf(&self, key: &str, value: &str) {
        let auto = self.datadir.join("postgresql.auto.conf");
        let current = fs::read_to_string(&auto).unwrap_or_default();
        let mut lines: Vec<String> = current
            .lines()
            .filter(|l| l.split('=').next().map(str::trim) != Some(key))
            .map(str::to_string)
            .collect();
        if !value.is_empty() {
            lines.push(format!("{key} = '{}'", value.replace('\'', "''")));
        }
        fs::write(&auto, lines.join("\n") + "\n").expect("write postgresql.auto.conf");
    }

    pub fn start(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
    }

    pub fn try_start(&self) -> Result<(), String> {
        let out = pg_command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.logfile)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            *self.state.running.borrow_mut() = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start {} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn stop(&self) {
        run(
            {
                let mut c = pg_command("pg_ctl");
                c.args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
                    .arg(&self.datadir);
                c
            },
            &format!("pg_ctl stop {}", self.name),
        );
        *self.state.running.borrow_mut() = false;
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    pub fn reload(&self) {
        self.sql("SELECT pg_reload_conf()");
    }

    pub fn promote(&self) {
        run(
            {
                let mut c = pg_command("pg_ctl");
                c.args(["promote", "-w", "-t", "60", "-D"])
                    .arg(&self.datadir);
                c
            },
            &format!("pg_ctl promote {}", self.name),
        );
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> String {
        fs::read_to_string(self.datadir.join("postmaster.pid"))
            .expect("postmaster.pid")
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    /// kill -9 of the postmaster: a crash, no shutdown checkpoint.
    pub fn kill9(&self) {
        let pid = self.postmaster_pid();
        let _ = Command::new("kill").args(["-9", &pid]).status();
        *self.state.running.borrow_mut() = false;
        // Children exit when they notice the postmaster is gone.
        let deadline = Instant::now() + DEADLINE;
        while Command::new("kill")
            .args(["-0", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "postmaster {pid} still alive after kill -9"
            );
            sleep(POLL);
        }
    }

    pub fn is_running(&self) -> bool {
        pg_command("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "5"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Runs SQL in database `db`: Ok(unaligned, tuples-only output) or Err(stderr).
    pub fn try_sql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        run_sql(self.port, db, sql)
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_in("postgres", sql)
    }

    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        self.try_sql_in(db, sql)
            .unwrap_or_else(|e| panic!("on {}: {sql}\n{e}\n{}", self.name, self.log_tail()))
    }

    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// Polls `sql` until it returns `expected`; fails at the deadline with the last result and the log.
    pub fn poll_query_until(&self, sql: &str, expected: &str) {
        self.poll_query_until_in("postgres", sql, expected)
    }

    pub fn poll_query_until_in(&self, db: &str, sql: &str, expected: &str) {
        let deadline = Instant::now() + DEADLINE;
        let mut last;
        loop {
            last = self.try_sql_in(db, sql);
            if last.as_deref() == Ok(expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "on {}: timed out after {:?} waiting for\n  {sql}\nto return {expected:?}; last result: {last:?}\n--- log of {} ---\n{}",
                    self.name,
                    DEADLINE,
                    self.name,
                    self.log_tail()
                );
            }
            sleep(POLL);
        }
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub fn wait_for_catchup(&self, primary: &Node) {
        let lsn = primary.sql("SELECT pg_current_wal_lsn()");
        self.poll_query_until(
            &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            "t",
        );
    }

    /// The current size of the server log: pass it to `wait_for_log` to look only at what follows.
    pub fn log_offset(&self) -> usize {
        fs::metadata(&self.logfile)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    pub fn log_since(&self, offset: usize) -> String {
        let bytes = fs::read(&self.logfile).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or(&[])).into_owned()
    }

    /// Waits until the log, after `offset`, contains `needle`; returns the offset just past it.
    pub fn wait_for_log(&self, needle: &str, offset: usize) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.log_since(offset);
            if let Some(pos) = text.find(needle) {
                return offset + pos + needle.len();
            }
            if Instant::now() > deadline {
                panic!(
                    "on {}: timed out after {:?} waiting for log line containing {needle:?}\n--- log of {} since offset {offset} ---\n{}",
                    self.name, DEADLINE, self.name, tail(&text, 8000)
                );
            }
            sleep(POLL);
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_since(0), 8000)
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// Counts non-overlapping occurrences of `needle` in `hay`.
pub fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// The logical slots of a node, one line each: name|temporary|restart_lsn|confirmed_flush_lsn|catalog_xmin.
pub const LOGICAL_SLOTS: &str =
    "SELECT slot_name, temporary, restart_lsn, confirmed_flush_lsn, catalog_xmin
   FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY slot_name";

/// The state column of the standby's status view for one slot.
pub fn status_of(slot: &str) -> String {
    format!("SELECT state FROM sync_logical_slot_status WHERE slot_name = '{slot}'")
}

/// Waits until the standby's copy of `slot` is persistent, ready, and stands
/// where the primary's slot stands now (restart_lsn, confirmed_flush_lsn, catalog_xmin).
pub fn wait_for_copy(standby: &Node, primary: &Node, slot: &str) {
    let remote = primary.sql(&format!(
        "SELECT restart_lsn || '|' || confirmed_flush_lsn || '|' || catalog_xmin
           FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    assert!(!remote.is_empty(), "the primary has no slot {slot}");
    standby.poll_query_until(
        &format!(
            "SELECT NOT temporary AND restart_lsn || '|' || confirmed_flush_lsn || '|' || catalog_xmin = '{remote}'
               FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
        "t",
    );
    standby.poll_query_until(
        &format!("SELECT ready FROM sync_logical_slot_status WHERE slot_name = '{slot}'"),
        "t",
    );
}

impl Node {
    /// A libpq connection string to this server's `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Turns this stopped server (an old primary, after a clean shutdown) into
    /// a streaming standby of `primary` through physical slot `slot` (made if missing).
    pub fn follow(&self, primary: &Node, slot: &str) {
        primary.sql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)
              WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}')"
        ));
        fs::write(self.datadir.join("standby.signal"), "").expect("write standby.signal");
        self.set_auto_conf(
            "primary_conninfo",
            &format!("host=127.0.0.1 port={} user=postgres", primary.port),
        );
        self.set_auto_conf("primary_slot_name", slot);
    }
}

/// A client session held open (psql reading its stdin), e.g. for a long transaction.
pub struct Session {
    child: std::process::Child,
}

impl Session {
    pub fn open(node: &Node, db: &str) -> Session {
        let child = psql(node.port, db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn psql");
        Session { child }
    }

    /// Sends statements; returns at once (the session runs them on its own).
    pub fn send(&mut self, sql: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("psql stdin");
        stdin.write_all(sql.as_bytes()).expect("write to psql");
        stdin.write_all(b"\n").expect("write to psql");
        stdin.flush().expect("flush psql");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of test_decoding output lines `table public.t: INSERT: id[integer]:N ...`.
pub fn inserted_ids(test_decoding_output: &str) -> Vec<i64> {
    test_decoding_output
        .lines()
        .filter(|l| l.contains("table public.t: INSERT:"))
        .filter_map(|l| {
            let rest = l.split("id[integer]:").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Fails unless `got` holds exactly the ids of `expected`, each once.
pub fn assert_exactly_once(got: &[i64], expected: &[i64], what: &str) {
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    let mut dupes: Vec<i64> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    dupes.dedup();
    let have: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let want: std::collections::BTreeSet<i64> = expected.iter().copied().collect();
    let missing: Vec<i64> = want.difference(&have).copied().collect();
    let extra: Vec<i64> = have.difference(&want).copied().collect();
    assert!(
        dupes.is_empty() && missing.is_empty() && extra.is_empty(),
        "{what}: {} received, {} expected; missing {:?}; received twice {:?}; not on the server {:?}",
        got.len(),
        want.len(),
        &missing[..missing.len().min(20)],
        &dupes[..dupes.len().min(20)],
        &extra[..extra.len().min(20)],
    );
}

/// The ids of table t on a node, in order.
pub fn table_ids(node: &Node, db: &str) -> Vec<i64> {
    node.sql_in(db, "SELECT id FROM t ORDER BY id")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// pg_recvlogical streaming `slot` of `node` into `file` (--start, no retry loop).
pub fn recvlogical_command(node: &Node, slot: &str, file: &Path) -> Command {
    let mut c = pg_command("pg_recvlogical");
    c.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "--no-loop",
        "-s",
        "1",
    ])
    .args(["-p", &node.port.to_string(), "-S", slot, "--start", "-f"])
    .arg(file);
    c
}

/// A subscriber of `primary`'s publication `pub` on table `t (id int, v text)`:
/// a plain cluster with subscription `sub`. No primary key on its table, so a
/// row applied twice stays visible as a duplicate.
pub fn subscriber_of(dir: &TestDir, primary: &Node) -> Node {
    let subscriber = dir.plain("subscriber");
    subscriber.start();
    subscriber.sql("CREATE TABLE t (id int, v text)");
    subscriber.sql(&format!(
        "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub",
        primary.conninfo("postgres")
    ));
    subscriber
}

/// A primary with the extension and table `t`, and its streaming standby
/// `standby1`, both started.
pub fn primary_and_standby(dir: &TestDir) -> (Node, Node) {
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let standby = dir.standby("standby1", &primary);
    standby.start();
    (primary, standby)
}

/// A primary that holds its logical consumers behind `standby1`
/// (`standby_slot_names`), with table `t`, publication `pub`, and that
/// streaming standby, both started.
pub fn primary_holding_for_standby1(dir: &TestDir) -> (Node, Node) {
    let primary = dir.primary("primary");
    primary.append_conf("sync_logical_slot.standby_slot_names = 'standby1'");
    primary.start();
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("CREATE PUBLICATION pub FOR TABLE t");
    let standby = dir.standby("standby1", &primary);
    standby.start();
    (primary, standby)
}

/// Runs `pg_recvlogical` on `slot` of `node` from `startpos` (None: the slot's
/// own position) until `endpos`, appending test_decoding output to `file`;
/// returns what this run wrote. `endpos` must lie between transactions.
pub fn recvlogical(
    node: &Node,
    slot: &str,
    startpos: Option<&str>,
    endpos: &str,
    file: &Path,
) -> String {
    let before = fs::read_to_string(file).unwrap_or_default();
    let mut c = recvlogical_command(node, slot, file);
    c.args(["-E", endpos]);
    if let Some(p) = startpos {
        c.args(["-I", p]);
    }
    // Bounded: pg_recvlogical stops at endpos; a hang is a failure.
    let mut child = c.spawn().expect("spawn pg_recvlogical");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait pg_recvlogical") {
            assert!(
                status.success(),
                "pg_recvlogical on {} failed: {status}\n{}",
                node.name,
                node.log_tail()
            );
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "pg_recvlogical on {} did not reach {endpos} in {DEADLINE:?}\n{}",
                node.name,
                node.log_tail()
            );
        }
        sleep(POLL);
    }
    let after = fs::read_to_string(file).unwrap_or_default();
    after.get(before.len()..).unwrap_or("").to_string()
}

/// A steady write load: a thread that inserts rows into `t` one transaction
/// each, ids counting up from `first`, until stopped. Errors (e.g. after the
/// server is killed) are ignored: the test compares with what the server has.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<i64>>,
}

impl Writer {
    pub fn start(node: &Node, first: i64) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let port = node.port;
        let thread = std::thread::spawn(move || {
            let mut id = first;
            while !flag.load(Ordering::SeqCst) {
                let _ = psql(port, "postgres")
                    .args(["-c", &format!("INSERT INTO t VALUES ({id}, 'w')")])
                    .output();
                id += 1;
            }
            id
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the load; returns the next id it would have written.
    pub fn stop(&mut self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The set-up of a copy that must wait: on a fresh primary and standby,
/// `lagging` is created, then 5 xids are burned, then `active` is created,
/// consumed past a running-xacts record and copied; only then does the standby
/// select `lagging`, whose catalog_xmin is older than what the standby can
/// reserve now: its copy waits, temporary (`waiting_for_remote`).
/// The primary has table `t (id int PRIMARY KEY)` with row 1.
pub fn lagging_and_active(dir: &TestDir) -> (Node, Node) {
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let standby = dir.standby("standby1", &primary);
    standby.set_auto_conf("sync_logical_slot.slot_names", "active");
    standby.start();

    primary.sql("SELECT pg_create_logical_replication_slot('lagging', 'test_decoding')");
    for _ in 0..5 {
        primary.sql("SELECT txid_current()");
    }
    primary.sql("SELECT pg_create_logical_replication_slot('active', 'test_decoding')");
    primary.sql("INSERT INTO t VALUES (1)");
    // Decoding a running-xacts record (CHECKPOINT) moves active's catalog_xmin
    // to the present, past what the standby reserves for its copy.
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('active', NULL, NULL)");
    wait_for_copy(&standby, &primary, "active");
    standby.wait_for_catchup(&primary);

    standby.set_auto_conf("sync_logical_slot.slot_names", "active, lagging");
    standby.reload();
    standby.poll_query_until(&status_of("lagging"), "waiting_for_remote");
    (primary, standby)
}

/// A pg_recvlogical process streaming `slot` of `node` to `file` until stopped.
pub struct Receiver {
    child: std::process::Child,
}

impl Receiver {
    pub fn start(node: &Node, slot: &str, file: &Path) -> Receiver {
        let child = recvlogical_command(node, slot, file)
            .args(["-F", "0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn pg_recvlogical");
        Receiver { child }
    }

    /// Whether it is still running (it exits at once when the slot is busy).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// kill -9 of pg_recvlogical itself (through runuser when root: its child).
    pub fn kill9(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `sql` on `port` in a thread; the handle yields psql's stdout or stderr.
pub fn sql_in_thread(port: u16, sql: &str) -> std::thread::JoinHandle<Result<String, String>> {
    let sql = sql.to_string();
    std::thread::spawn(move || run_sql(port, "postgres", &sql))
}

/// The major version of the PostgreSQL under test (`bindir()/pg_config
/// --version`, e.g. "PostgreSQL 16.2" gives 16).
pub fn pg_major() -> u32 {
    let out = Command::new(bindir().join("pg_config"))
        .arg("--version")
        .output()
        .expect("run pg_config --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("cannot tell the major version from {text:?}"))
}

/// The workers' least-privilege role on `primary` (README, set-up step 2):
/// `slot_sync`, REPLICATION and EXECUTE on the functions the worker calls.
pub fn create_worker_role(primary: &Node) {
    primary.sql("CREATE ROLE slot_sync LOGIN REPLICATION");
    primary.sql(
        "GRANT EXECUTE ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn),
                                   sync_logical_slot_read_slot_state(name),
                                   sync_logical_slot_wait_for_change(text, text, bigint, integer)
            TO slot_sync",
    );
}

/// Points `standby`'s worker at `primary` as `slot_sync` (reloaded).
pub fn connect_worker_as_slot_sync(standby: &Node, primary: &Node) {
    standby.sql(&format!(
        "ALTER SYSTEM SET sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} user=slot_sync dbname=postgres'",
        primary.port
    ));
    standby.reload();
}

/// Runs `script` through psql's standard input (SQL and backslash
/// commands) in database postgres on `node`, with `args` added.
pub fn psql_stdin(node: &Node, args: &[&str], script: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = psql(node.port, "postgres")
        .args(args)
        .args(["-A", "-t", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .expect("write to psql");
    child.wait_with_output().expect("run psql")
}

/// A query run by a parallel worker (forced), which restores every setting
/// of its leader: it must work whatever the extension's settings hold.
pub fn forced_parallel_query(node: &Node) -> Result<String, String> {
    let force = if node.sql("SHOW server_version_num").parse::<u32>().unwrap() >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    node.try_sql(&format!(
        "SET {force} = on; SELECT count(*) > 0 FROM pg_class"
    ))
}
