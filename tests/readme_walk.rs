//! # The README's set-up, step by step, as a DBA follows it
//!
//! ```text
//!  README.md "Set-up, step by step": every block marked <!-- walk: NODE KIND ... -->, in order
//!    primary (initdb only)  ──pg_basebackup -R -S standby1, as the README writes it──▶  standby1
//!  then: a slot made on the primary is ready on the standby, wait_ready('60s') is t,
//!        the primary is killed, the standby promoted, the slot's consumer goes on there
//! ```
//! The blocks run as written; nothing the README should say is set here.
//! The test sets only what lets servers share one machine (port, listen
//! address, socket directory, fsync off, a log line prefix) and lets the
//! test's own superuser in (`postgres`, trusted from loopback: the README's
//! lines follow in pg_hba.conf). So a README that leaves out a setting, a
//! grant, a pg_hba line or a step fails here.
//!
//! The markers, an HTML comment on the line before a fenced block:
//! `<!-- walk: NODE KIND [way=WAY] [to=standby-conf] -->`
//! - NODE: `primary` or `standby` (standby1);
//! - KIND: `conf` (appended to NODE's postgresql.conf), `hba` (appended to
//!   its pg_hba.conf), `sql` (run by psql as the superuser in database
//!   `postgres` on NODE, started first if it is not running), `shell` (run
//!   by `sh -e` as the PostgreSQL OS user, with the PostgreSQL binaries on
//!   PATH and the README's password in PGPASSWORD, where a DBA types it);
//! - `way=WAY`: only in that walk: `fdw` (set-up step 4's first way,
//!   failover_logical_slot_init) or `conninfo` (its third way, the
//!   standby's own primary_conninfo);
//! - `to=standby-conf`: the rows the SQL returns are appended to the
//!   standby's postgresql.conf.
//!
//! Placeholders, replaced in every block: `primary.example` → 127.0.0.1,
//! `10.0.0.0/24` → 127.0.0.1/32, `5432` → the primary's port,
//! `/var/lib/postgresql/15/main` → the standby's data directory. Servers
//! are never restarted behind the README's back: a configuration block takes
//! effect when its server first starts, or when a later block reloads it.
//!
//! `SLS_README_WALK_FILE=path` walks another file instead of README.md (to
//! see that a README with a step broken fails here).
//!
//! Two walks: `fdw` with the configuration files outside the data directory
//! (Debian's layout: the standby keeps its own postgresql.conf and
//! pg_hba.conf, the base backup brings only postgresql.auto.conf), and
//! `conninfo` with them inside (the base backup copies the primary's
//! postgresql.conf, `sync_logical_slot.*` settings included).

mod common;
use common::*;

use std::fs;
use std::time::Instant;

/// The README's example password (what a DBA types at pg_basebackup's prompt).
const PASSWORD: &str = "s3cret";
/// The README's example data directory, of the standby.
const DATA_DIRECTORY: &str = "/var/lib/postgresql/15/main";
/// The test's own superuser: trusted from loopback, as initdb -A trust would,
/// but for `postgres` only, so that every other role needs the README's lines.
const TEST_HBA: &str = "local all postgres trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
";

#[derive(Debug)]
struct Block {
    /// 1-based line of the marker in README.md.
    line: usize,
    node: String,
    kind: String,
    way: Option<String>,
    to: Option<String>,
    text: String,
}

/// Every marked block of the README, in order.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let marker = lines[i].trim();
        let Some(spec) = marker
            .strip_prefix("<!-- walk:")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            i += 1;
            continue;
        };
        let line = i + 1;
        let words: Vec<&str> = spec.split_whitespace().collect();
        assert!(
            words.len() >= 2,
            "README.md:{line}: a walk marker names a node and a kind: {marker}"
        );
        let (mut way, mut to) = (None, None);
        for w in &words[2..] {
            match w.split_once('=') {
                Some(("way", v)) => way = Some(v.to_string()),
                Some(("to", v)) => to = Some(v.to_string()),
                _ => panic!("README.md:{line}: unknown word {w:?} in {marker}"),
            }
        }
        assert!(
            matches!(words[0], "primary" | "standby"),
            "README.md:{line}: node {:?}",
            words[0]
        );
        assert!(
            matches!(words[1], "conf" | "hba" | "sql" | "shell"),
            "README.md:{line}: kind {:?}",
            words[1]
        );
        let fence = lines.get(i + 1).copied().unwrap_or_default();
        let indent = fence.len() - fence.trim_start().len();
        assert!(
            fence.trim_start().starts_with("```"),
            "README.md:{line}: a walk marker must be followed by a fenced block, not {fence:?}"
        );
        let mut text = String::new();
        i += 2;
        loop {
            let l = *lines
                .get(i)
                .unwrap_or_else(|| panic!("README.md:{line}: the block never closes"));
            i += 1;
            if l.trim() == "```" {
                break;
            }
            text.push_str(l.get(indent..).unwrap_or(l.trim_start()));
            text.push('\n');
        }
        out.push(Block {
            line,
            node: words[0].to_string(),
            kind: words[1].to_string(),
            way,
            to,
            text,
        });
    }
    out
}

/// `text` with every whole `5432` (not part of a longer number) replaced.
fn replace_port(text: &str, port: u16) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with("5432")
            && (i == 0 || !bytes[i - 1].is_ascii_digit())
            && !bytes.get(i + 4).is_some_and(|b| b.is_ascii_digit())
        {
            out.push_str(&port.to_string());
            i += 4;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn substitute(text: &str, primary: &Node, standby: &Node) -> String {
    replace_port(
        &text
            .replace("primary.example", "127.0.0.1")
            .replace("10.0.0.0/24", "127.0.0.1/32")
            .replace(DATA_DIRECTORY, &standby.datadir().display().to_string()),
        primary.port,
    )
}

/// What lets a server share this machine, and nothing the README should say.
fn machine_conf(node: &Node, dir: &TestDir) -> String {
    format!(
        "port = {}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{}'
fsync = off
log_line_prefix = '%m [%p] %b '
",
        node.port,
        dir.path.display()
    )
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    /// postgresql.conf and pg_hba.conf in the data directory: a base backup copies them.
    InDataDirectory,
    /// Elsewhere (Debian's /etc/postgresql): the standby has its own.
    Outside,
}

struct Walk<'a> {
    dir: &'a TestDir,
    primary: Node,
    standby: Node,
    started: Vec<String>,
    /// initdb's postgresql.conf: what a standby host with its own files starts from.
    initdb_conf: String,
    layout: Layout,
    standby_made: bool,
}

impl Walk<'_> {
    fn node(&self, name: &str) -> &Node {
        if name == "primary" {
            &self.primary
        } else {
            &self.standby
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- log of primary ---\n{}\n--- log of standby1 ---\n{}",
            self.primary.log_tail(),
            if self.standby.logfile.exists() {
                self.standby.log_tail()
            } else {
                "(never started)".into()
            }
        )
    }

    /// Polls `sql` on `node` until it returns `expected`; fails at the
    /// deadline with both servers' logs (what went wrong is often in the other's).
    fn wait_until(&self, node: &Node, sql: &str, expected: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = node.try_sql(sql);
            if last.as_deref() == Ok(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "on {}: {sql}\ndid not return {expected:?} in {DEADLINE:?}; last: {last:?}\n{}",
                node.name,
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn ensure_started(&mut self, name: &str) {
        if !self.started.iter().any(|n| n == name) {
            self.node(name)
                .try_start()
                .unwrap_or_else(|e| panic!("starting {name}: {e}\n{}", self.logs()));
            self.started.push(name.to_string());
        }
    }

    fn run(&mut self, block: &Block) {
        let text = substitute(&block.text, &self.primary, &self.standby);
        let here = format!(
            "README.md:{} ({} {}):\n{text}",
            block.line, block.node, block.kind
        );
        match block.kind.as_str() {
            "conf" => self.node(&block.node).append_conf(&text),
            "hba" => {
                let hba = self.node(&block.node).datadir().join("pg_hba.conf");
                let mut rules = fs::read_to_string(&hba).expect("read pg_hba.conf");
                rules.push_str(&text);
                fs::write(&hba, rules).expect("write pg_hba.conf");
            }
            "sql" => {
                self.ensure_started(&block.node);
                let node = self.node(&block.node);
                let out = psql_stdin(node, &[], &text);
                assert!(
                    out.status.success(),
                    "{here}\nfailed: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
                let rows = String::from_utf8_lossy(&out.stdout).into_owned();
                match block.to.as_deref() {
                    None => {}
                    Some("standby-conf") => {
                        assert!(!rows.trim().is_empty(), "{here}\nreturned nothing");
                        self.standby.append_conf(&rows);
                    }
                    Some(other) => panic!("{here}\nunknown to={other}"),
                }
            }
            "shell" => {
                let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bindir().display());
                let out = os_user_command("env")
                    .arg(format!("PATH={path}"))
                    .arg(format!("PGPASSWORD={PASSWORD}"))
                    .args(["sh", "-ec", &text])
                    .current_dir(&self.dir.path)
                    .output()
                    .expect("run sh");
                assert!(
                    out.status.success(),
                    "{here}\nfailed ({}):\n{}{}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
                self.after_shell();
            }
            other => panic!("{here}\nunknown kind {other}"),
        }
    }

    /// Once a shell step has made the standby's data directory: its
    /// configuration files as the layout has them, and this machine's port.
    fn after_shell(&mut self) {
        if self.standby_made || !self.standby.datadir().join("PG_VERSION").exists() {
            return;
        }
        self.standby_made = true;
        if self.layout == Layout::Outside {
            fs::write(
                self.standby.datadir().join("postgresql.conf"),
                &self.initdb_conf,
            )
            .expect("write the standby's own postgresql.conf");
            fs::write(self.standby.datadir().join("pg_hba.conf"), TEST_HBA)
                .expect("write the standby's own pg_hba.conf");
        }
        self.standby
            .append_conf(&machine_conf(&self.standby, self.dir));
    }
}

fn walk(way: &str, layout: Layout) {
    let t0 = Instant::now();
    let path = std::env::var("SLS_README_WALK_FILE")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/README.md").into());
    let readme = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let all = blocks(&readme);
    let steps: Vec<&Block> = all
        .iter()
        .filter(|b| b.way.as_deref().is_none_or(|w| w == way))
        .collect();
    // The markers themselves: a README that lost them walks nothing.
    for (node, kind) in [
        ("primary", "conf"),
        ("primary", "hba"),
        ("primary", "sql"),
        ("standby", "shell"),
        ("standby", "sql"),
    ] {
        assert!(
            steps.iter().any(|b| b.node == node && b.kind == kind),
            "README.md has no `<!-- walk: {node} {kind} -->` block for way {way}"
        );
    }
    assert!(
        steps.iter().any(|b| b.way.as_deref() == Some(way)),
        "README.md has no block for way {way}"
    );

    let dir = TestDir::new(&format!("readme_walk_{way}"));
    let primary = dir.initdb_only("primary");
    let initdb_conf = fs::read_to_string(primary.datadir().join("postgresql.conf"))
        .expect("read postgresql.conf");
    primary.append_conf(&machine_conf(&primary, &dir));
    fs::write(primary.datadir().join("pg_hba.conf"), TEST_HBA).expect("write pg_hba.conf");
    let standby = dir.unmade("standby1");
    let mut w = Walk {
        dir: &dir,
        primary,
        standby,
        started: Vec::new(),
        initdb_conf,
        layout,
        standby_made: false,
    };
    for block in &steps {
        w.run(block);
    }
    w.ensure_started("primary");
    w.ensure_started("standby");
    println!(
        "walked {} blocks of README.md ({way}, configuration {layout:?}) in {:?}",
        steps.len(),
        t0.elapsed()
    );
    let (primary, standby) = (&w.primary, &w.standby);

    // The standby's configuration files blank standby_slot_names: this walk's
    // base backup came before step 6 set it on the primary, but one made
    // later (another standby, a re-attached old primary) copies it, and once
    // promoted such a standby would hold every consumer on its missing slot.
    assert_eq!(
        standby.sql(
            "SELECT coalesce((SELECT '[' || setting || ']' FROM pg_file_settings
                               WHERE name = 'sync_logical_slot.standby_slot_names'
                               ORDER BY seqno DESC LIMIT 1), 'not set')"
        ),
        "[]",
        "the README's standby configuration should set sync_logical_slot.standby_slot_names = ''"
    );

    // The worker logs in on the primary as the README's role.
    w.wait_until(
        primary,
        "SELECT string_agg(usename, ',') FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'",
        "slot_sync",
    );

    // A consumer's slot, made after the set-up. Its copy waits until the
    // consumer reads again (step 7): the consumer reads (a checkpoint gives
    // decoding a running-xacts record at once).
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("SELECT pg_create_logical_replication_slot('walk_slot', 'test_decoding')");
    let deadline = Instant::now() + DEADLINE;
    let mut id = 0;
    loop {
        id += 1;
        primary.sql(&format!("INSERT INTO t VALUES ({id}, 'before')"));
        primary.sql("CHECKPOINT");
        primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('walk_slot', NULL, NULL)");
        let ready = standby
            .try_sql("SELECT ready FROM sync_logical_slot_status WHERE slot_name = 'walk_slot'");
        if ready.as_deref() == Ok("t") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "walk_slot's copy is not ready after {DEADLINE:?}: {ready:?}\n{}",
            standby
                .try_sql("SELECT * FROM sync_logical_slot_status")
                .unwrap_or_default()
                + "\n"
                + &w.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Changes the consumer has not read yet, then the promotion gate.
    for n in 1001..=1005 {
        primary.sql(&format!("INSERT INTO t VALUES ({n}, 'after')"));
    }
    standby.wait_for_catchup(primary);
    wait_for_copy(standby, primary, "walk_slot");
    assert_eq!(
        standby.sql("SELECT sync_logical_slot_wait_ready('60s')"),
        "t",
        "{}",
        w.logs()
    );

    // Failover: the primary dies, the standby is promoted, the consumer
    // reads on there: what it had not read, once, and then new changes. A
    // consumer held there (a standby_slot_names the README left as the
    // primary's) ends at the statement timeout and fails the test.
    primary.kill9();
    standby.promote();
    standby.poll_query_until("SELECT pg_is_in_recovery()", "f");
    let read = |what: &str| {
        standby
            .try_sql(
                "SET statement_timeout = '20s';
                 SELECT data FROM pg_logical_slot_get_changes('walk_slot', NULL, NULL)",
            )
            .unwrap_or_else(|e| panic!("reading {what} on the promoted standby: {e}\n{}", w.logs()))
    };
    let got = inserted_ids(&read("the rest"));
    assert_exactly_once(&got, &(1001..=1005).collect::<Vec<_>>(), "after failover");
    standby.sql("INSERT INTO t VALUES (2001, 'promoted')");
    assert_eq!(inserted_ids(&read("new changes")), vec![2001]);
    println!("way {way}: set-up, sync and failover in {:?}", t0.elapsed());
}

/// Step 4's first way (failover_logical_slot_init's lines on the standby),
/// configuration files outside the data directory.
#[test]
fn readme_set_up_with_failover_logical_slot_init() {
    walk("fdw", Layout::Outside);
}

/// Step 4's third way (the standby's own primary_conninfo), configuration
/// files in the data directory: the base backup copies the primary's.
#[test]
fn readme_set_up_with_the_standbys_primary_conninfo() {
    walk("conninfo", Layout::InDataDirectory);
}

#[test]
fn placeholders_are_replaced_whole() {
    assert_eq!(
        replace_port("-p 5432 x:5432:y 54321 15432", 7),
        "-p 7 x:7:y 54321 15432"
    );
}
