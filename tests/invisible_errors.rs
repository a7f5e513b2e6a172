//! # A session that does not use the library sees exactly the errors it would see without it
//!
//! ```text
//!  with_lib (shared_preload_libraries = 'sync_logical_slot',   ──streaming, slot "standby1"──▶  standby1
//!            sync_logical_slot.standby_slot_names = 'standby1',
//!            CREATE EXTENSION sync_logical_slot)
//!  without_lib (the same configuration, then shared_preload_libraries = '')
//!
//!  both: RUST_BACKTRACE=1 in the postmaster's environment, the same schema app.*,
//!        logical slot td (test_decoding), physical slot phys
//!  the same failing statements on both, through psql -v VERBOSITY=verbose -v SHOW_CONTEXT=always:
//!    executor (constraints, NOT NULL, CHECK, FK, domain, division by zero, casts, parse errors)
//!    PL/pgSQL GET STACKED DIAGNOSTICS (static SQL, EXECUTE through SPI, nested calls, RAISE USING)
//!    COPY FROM STDIN / COPY (query) TO STDOUT
//!    pg_logical_slot_get_changes / peek_changes (the hook's decoding path)
//!    a database walsender (replication=database): replication commands and SQL
//! ```
//! docs/design.md invariant 9. Invisible to everyone else: a session that does not
//! use the library sees exactly the same error fields. Every field the client
//! receives (SQLSTATE, message, DETAIL, HINT, CONTEXT, QUERY, SCHEMA/TABLE/
//! COLUMN/DATATYPE/CONSTRAINT NAME, LOCATION, position and caret) and every
//! field PL/pgSQL can read must be byte for byte what the same server without
//! the library sends; no Rust panic text or backtrace anywhere, although the
//! servers run with RUST_BACKTRACE=1 (checked in /proc/<postmaster>/environ),
//! neither in what clients see nor in the server log. Only ports and data
//! directory paths are normalised.

mod common;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The same schema on both servers, in schema `app` (so SCHEMA NAME says something).
const SCHEMA: &str = r#"
CREATE SCHEMA app;
CREATE TABLE app.t (
    id int CONSTRAINT t_pkey PRIMARY KEY,
    v text NOT NULL,
    n int CONSTRAINT t_n_positive CHECK (n > 0),
    u int CONSTRAINT t_u_key UNIQUE
);
INSERT INTO app.t VALUES (1, 'one', 1, 1);
CREATE TABLE app.child (
    id int PRIMARY KEY,
    parent int CONSTRAINT child_parent_fkey REFERENCES app.t (id)
);
INSERT INTO app.child VALUES (10, 1);
CREATE TABLE app.zero (n int);
INSERT INTO app.zero VALUES (0);
CREATE TABLE app.words (w text);
INSERT INTO app.words VALUES ('x');
CREATE DOMAIN app.posint AS int CONSTRAINT posint_positive CHECK (VALUE > 0);
CREATE TABLE app.d (p app.posint);

CREATE FUNCTION app.inner_f() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.t VALUES (1, 'again', 1, 2);
END
$$;
CREATE FUNCTION app.outer_f() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM app.inner_f();
END
$$;
CREATE FUNCTION app.sql_f() RETURNS void LANGUAGE sql AS $$
    INSERT INTO app.t VALUES (1, 'again', 1, 2);
$$;
CREATE FUNCTION app.raiser() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'custom failure',
        DETAIL = 'custom detail',
        HINT = 'custom hint',
        ERRCODE = 'U0001',
        COLUMN = 'custom_column',
        CONSTRAINT = 'custom_constraint',
        DATATYPE = 'custom_type',
        TABLE = 'custom_table',
        SCHEMA = 'custom_schema';
END
$$;
"#;

/// The body of a PL/pgSQL function that runs `stmt` and returns every field
/// GET STACKED DIAGNOSTICS can read of the error it raises.
fn diagnostics_function(name: &str, params: &str, stmt: &str) -> String {
    format!(
        r#"CREATE FUNCTION app.{name}({params}) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    s text; m text; d text; h text; c text; sn text; tn text; cn text; dn text; kn text;
BEGIN
    {stmt}
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS
        s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL,
        h = PG_EXCEPTION_HINT, c = PG_EXCEPTION_CONTEXT, sn = SCHEMA_NAME,
        tn = TABLE_NAME, cn = COLUMN_NAME, dn = PG_DATATYPE_NAME, kn = CONSTRAINT_NAME;
    RETURN format(E'sqlstate: %s\nmessage: %s\ndetail: %s\nhint: %s\ncontext: %s\nschema: %s\ntable: %s\ncolumn: %s\ndatatype: %s\nconstraint: %s',
                  s, m, d, h, c, sn, tn, cn, dn, kn);
END
$f$;
"#
    )
}

fn diagnostics_functions() -> String {
    [
        diagnostics_function(
            "diag_dup",
            "",
            "INSERT INTO app.t VALUES (1, 'again', 1, 2);",
        ),
        diagnostics_function(
            "diag_not_null",
            "",
            "INSERT INTO app.t VALUES (3, NULL, 1, 3);",
        ),
        diagnostics_function(
            "diag_check",
            "",
            "INSERT INTO app.t VALUES (4, 'four', -1, 4);",
        ),
        diagnostics_function("diag_fk", "", "INSERT INTO app.child VALUES (2, 999);"),
        diagnostics_function("diag_domain", "", "INSERT INTO app.d VALUES (-1);"),
        // Through a SELECT (the executor), not a RAISE caught in the same block.
        diagnostics_function("diag_raise", "", "PERFORM app.raiser();"),
        diagnostics_function("diag_nested", "", "PERFORM app.outer_f();"),
        // Dynamic SQL: EXECUTE through SPI.
        diagnostics_function("diag_dyn", "stmt text", "EXECUTE stmt;"),
    ]
    .concat()
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// A normal session.
    Sql,
    /// A database walsender (replication=database).
    Walsender,
}

struct Case {
    name: &'static str,
    via: Via,
    /// `-c` text, or (with `stdin`) nothing.
    sql: &'static str,
    /// psql reads this as its script (`-f -`), e.g. for COPY FROM STDIN.
    stdin: Option<&'static str>,
    /// What the server without the library must show, so the comparison is not vacuous.
    expect: &'static [&'static str],
}

const fn sql(name: &'static str, sql: &'static str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        via: Via::Sql,
        sql,
        stdin: None,
        expect,
    }
}

const fn walsender(name: &'static str, sql: &'static str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        via: Via::Walsender,
        sql,
        stdin: None,
        expect,
    }
}

const fn script(name: &'static str, stdin: &'static str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        via: Via::Sql,
        sql: "",
        stdin: Some(stdin),
        expect,
    }
}

const CASES: &[Case] = &[
    // 1. The executor.
    sql(
        "duplicate primary key",
        "INSERT INTO app.t VALUES (1, 'again', 1, 2)",
        &[
            "ERROR:  23505:",
            "SCHEMA NAME:  app",
            "TABLE NAME:  t",
            "CONSTRAINT NAME:  t_pkey",
            "LOCATION:  _bt_check_unique",
        ],
    ),
    sql(
        "duplicate unique key",
        "INSERT INTO app.t VALUES (2, 'two', 1, 1)",
        &["ERROR:  23505:", "CONSTRAINT NAME:  t_u_key", "LOCATION:"],
    ),
    sql(
        "NOT NULL violation",
        "INSERT INTO app.t VALUES (3, NULL, 1, 3)",
        &[
            "ERROR:  23502:",
            "TABLE NAME:  t",
            "COLUMN NAME:  v",
            "LOCATION:  ExecConstraints",
        ],
    ),
    sql(
        "CHECK violation",
        "INSERT INTO app.t VALUES (4, 'four', -1, 4)",
        &[
            "ERROR:  23514:",
            "CONSTRAINT NAME:  t_n_positive",
            "LOCATION:",
        ],
    ),
    sql(
        "CHECK violation by UPDATE",
        "UPDATE app.t SET n = 0 WHERE id = 1",
        &[
            "ERROR:  23514:",
            "CONSTRAINT NAME:  t_n_positive",
            "LOCATION:",
        ],
    ),
    sql(
        "FK violation on insert",
        "INSERT INTO app.child VALUES (2, 999)",
        &[
            "ERROR:  23503:",
            "TABLE NAME:  child",
            "CONSTRAINT NAME:  child_parent_fkey",
            "LOCATION:  ri_ReportViolation",
        ],
    ),
    sql(
        "FK violation on delete",
        "DELETE FROM app.t WHERE id = 1",
        &["ERROR:  23503:", "CONSTRAINT NAME:  child_parent_fkey"],
    ),
    sql(
        "domain CHECK violation",
        "INSERT INTO app.d VALUES (-1)",
        &[
            "ERROR:  23514:",
            "DATATYPE NAME:  posint",
            "CONSTRAINT NAME:  posint_positive",
            "LOCATION:",
        ],
    ),
    sql(
        "division by zero",
        "SELECT 1 / n FROM app.zero",
        &["ERROR:  22012:", "LOCATION:  int4div"],
    ),
    sql(
        "bad cast of a literal (position)",
        "SELECT 'x'::int",
        &[
            "ERROR:  22P02:",
            "LINE 1: SELECT 'x'::int",
            "^",
            "LOCATION:",
        ],
    ),
    sql(
        "bad cast at run time",
        "SELECT w::int FROM app.words",
        &["ERROR:  22P02:", "LOCATION:  pg_strtoint32"],
    ),
    sql(
        "unknown column (position)",
        "SELECT nosuchcol FROM app.t",
        &[
            "ERROR:  42703:",
            "LINE 1: SELECT nosuchcol",
            "^",
            "LOCATION:",
        ],
    ),
    sql(
        "syntax error (position)",
        "SELECT FROM WHERE app.t",
        &["ERROR:  42601:", "LINE 1:", "^", "LOCATION:"],
    ),
    sql(
        "error in a nested PL/pgSQL call (context lines)",
        "SELECT app.outer_f()",
        &[
            "ERROR:  23505:",
            "CONTEXT:  SQL statement \"INSERT INTO app.t",
            "PL/pgSQL function app.inner_f() line 3 at SQL statement",
            "PL/pgSQL function app.outer_f() line 3 at PERFORM",
            "CONSTRAINT NAME:  t_pkey",
            "LOCATION:",
        ],
    ),
    sql(
        "error in a SQL function (context)",
        "SELECT app.sql_f()",
        &[
            "ERROR:  23505:",
            "SQL function \"sql_f\" statement 1",
            "CONSTRAINT NAME:  t_pkey",
        ],
    ),
    sql(
        "RAISE with every option",
        "SELECT app.raiser()",
        &[
            "ERROR:  U0001: custom failure",
            "DETAIL:  custom detail",
            "HINT:  custom hint",
            "CONTEXT:  PL/pgSQL function app.raiser() line 3 at RAISE",
            "SCHEMA NAME:  custom_schema",
            "TABLE NAME:  custom_table",
            "COLUMN NAME:  custom_column",
            "DATATYPE NAME:  custom_type",
            "CONSTRAINT NAME:  custom_constraint",
            "LOCATION:  exec_stmt_raise",
        ],
    ),
    // 2. PL/pgSQL: GET STACKED DIAGNOSTICS.
    sql(
        "diagnostics: duplicate key",
        "SELECT app.diag_dup()",
        &[
            "sqlstate: 23505",
            "schema: app",
            "table: t",
            "constraint: t_pkey",
            "context: SQL statement",
        ],
    ),
    sql(
        "diagnostics: NOT NULL violation",
        "SELECT app.diag_not_null()",
        &["sqlstate: 23502", "table: t", "column: v"],
    ),
    sql(
        "diagnostics: CHECK violation",
        "SELECT app.diag_check()",
        &["sqlstate: 23514", "constraint: t_n_positive"],
    ),
    sql(
        "diagnostics: FK violation",
        "SELECT app.diag_fk()",
        &["sqlstate: 23503", "constraint: child_parent_fkey"],
    ),
    sql(
        "diagnostics: domain CHECK violation",
        "SELECT app.diag_domain()",
        &[
            "sqlstate: 23514",
            "datatype: posint",
            "constraint: posint_positive",
        ],
    ),
    sql(
        "diagnostics: RAISE with every option",
        "SELECT app.diag_raise()",
        &[
            "sqlstate: U0001",
            "detail: custom detail",
            "hint: custom hint",
            "schema: custom_schema",
            "table: custom_table",
            "column: custom_column",
            "datatype: custom_type",
            "constraint: custom_constraint",
        ],
    ),
    sql(
        "diagnostics: nested calls",
        "SELECT app.diag_nested()",
        &[
            "sqlstate: 23505",
            "constraint: t_pkey",
            "PL/pgSQL function app.inner_f() line 3 at SQL statement",
        ],
    ),
    // 3. SPI: the same through EXECUTE.
    sql(
        "EXECUTE: duplicate key",
        "SELECT app.diag_dyn('INSERT INTO app.t VALUES (1, ''again'', 1, 2)')",
        &["sqlstate: 23505", "constraint: t_pkey", "at EXECUTE"],
    ),
    sql(
        "EXECUTE: NOT NULL violation",
        "SELECT app.diag_dyn('INSERT INTO app.t VALUES (3, NULL, 1, 3)')",
        &["sqlstate: 23502", "column: v"],
    ),
    sql(
        "EXECUTE: domain CHECK violation",
        "SELECT app.diag_dyn('INSERT INTO app.d VALUES (-1)')",
        &["sqlstate: 23514", "datatype: posint"],
    ),
    sql(
        "EXECUTE: FK violation",
        "SELECT app.diag_dyn('INSERT INTO app.child VALUES (2, 999)')",
        &["sqlstate: 23503", "constraint: child_parent_fkey"],
    ),
    sql(
        "EXECUTE: division by zero",
        "SELECT app.diag_dyn('SELECT 1 / n FROM app.zero')",
        &["sqlstate: 22012"],
    ),
    sql(
        "EXECUTE: RAISE with every option",
        "SELECT app.diag_dyn('SELECT app.raiser()')",
        &["sqlstate: U0001", "constraint: custom_constraint"],
    ),
    sql(
        "EXECUTE: nested calls",
        "SELECT app.diag_dyn('SELECT app.outer_f()')",
        &[
            "sqlstate: 23505",
            "PL/pgSQL function app.outer_f() line 3 at PERFORM",
        ],
    ),
    sql(
        "EXECUTE: uncaught, seen by the client",
        "DO $$ BEGIN EXECUTE 'INSERT INTO app.t VALUES (1, ''again'', 1, 2)'; END $$",
        &[
            "ERROR:  23505:",
            "at EXECUTE",
            "CONSTRAINT NAME:  t_pkey",
            "LOCATION:",
        ],
    ),
    // 4. COPY.
    script(
        "COPY FROM STDIN, bad row",
        "COPY app.t (id, v, n, u) FROM STDIN;\n5\tfive\t5\t5\n6\tsix\tbad\t6\n\\.\n",
        &[
            "ERROR:  22P02:",
            "CONTEXT:  COPY t, line 2, column n: \"bad\"",
            "LOCATION:",
        ],
    ),
    script(
        "COPY FROM STDIN, duplicate key",
        "COPY app.t (id, v, n, u) FROM STDIN;\n7\tseven\t7\t7\n1\tagain\t1\t8\n\\.\n",
        &[
            "ERROR:  23505:",
            "CONTEXT:  COPY t, line 2",
            "CONSTRAINT NAME:  t_pkey",
        ],
    ),
    sql(
        "COPY (query) TO STDOUT",
        "COPY (SELECT 1 / n FROM app.zero) TO STDOUT",
        &["ERROR:  22012:", "LOCATION:  int4div"],
    ),
    // 5. Logical decoding functions (the hook waits for standby1 first).
    sql(
        "get_changes of a missing slot",
        "SELECT * FROM pg_logical_slot_get_changes('no_such_slot', NULL, NULL)",
        &[
            "ERROR:  42704:",
            "\"no_such_slot\" does not exist",
            "LOCATION:  ReplicationSlotAcquire",
        ],
    ),
    sql(
        "get_changes with a bad option",
        "SELECT * FROM pg_logical_slot_get_changes('td', NULL, NULL, 'include-xids', 'maybe')",
        &[
            "ERROR:  22023:",
            "\"include-xids\"",
            "CONTEXT:  slot \"td\", output plugin \"test_decoding\", in the startup callback",
            "LOCATION:",
        ],
    ),
    sql(
        "peek_changes with a bad option",
        "SELECT * FROM pg_logical_slot_peek_changes('td', NULL, NULL, 'include-xids', 'maybe')",
        &["ERROR:  22023:", "in the startup callback", "LOCATION:"],
    ),
    sql(
        "get_changes of a physical slot",
        "SELECT * FROM pg_logical_slot_get_changes('phys', NULL, NULL)",
        &["ERROR:  ", "physical replication slot", "LOCATION:"],
    ),
    sql(
        "create an existing slot",
        "SELECT pg_create_logical_replication_slot('td', 'test_decoding')",
        &["ERROR:  42710:", "\"td\" already exists", "LOCATION:"],
    ),
    // 6. A database walsender.
    walsender(
        "walsender: CREATE_REPLICATION_SLOT of an existing slot",
        "CREATE_REPLICATION_SLOT td LOGICAL test_decoding",
        &["ERROR:  42710:", "\"td\" already exists", "LOCATION:"],
    ),
    walsender(
        "walsender: START_REPLICATION of a missing slot",
        "START_REPLICATION SLOT \"no_such\" LOGICAL 0/0",
        &[
            "ERROR:  42704:",
            "\"no_such\" does not exist",
            "LOCATION:  ReplicationSlotAcquire",
        ],
    ),
    walsender(
        "walsender: START_REPLICATION with a bad option",
        "START_REPLICATION SLOT \"td\" LOGICAL 0/0 (\"include-xids\" 'maybe')",
        &["ERROR:  22023:", "in the startup callback", "LOCATION:"],
    ),
    walsender(
        "walsender: DROP_REPLICATION_SLOT of a missing slot",
        "DROP_REPLICATION_SLOT no_such",
        &["ERROR:  42704:", "LOCATION:"],
    ),
    walsender(
        "walsender: SQL duplicate key",
        "INSERT INTO app.t VALUES (1, 'again', 1, 2)",
        &["ERROR:  23505:", "CONSTRAINT NAME:  t_pkey", "LOCATION:"],
    ),
    walsender(
        "walsender: SQL division by zero",
        "SELECT 1 / n FROM app.zero",
        &["ERROR:  22012:", "LOCATION:  int4div"],
    ),
    walsender(
        "walsender: SQL get_changes of a missing slot",
        "SELECT * FROM pg_logical_slot_get_changes('no_such_slot', NULL, NULL)",
        &["ERROR:  42704:", "LOCATION:  ReplicationSlotAcquire"],
    ),
];

/// Runs psql to completion within DEADLINE; returns its exit code, stdout and stderr.
fn run_psql(conninfo: &str, sql: &str, stdin: Option<&str>) -> String {
    let mut cmd = common::pg_command("psql");
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
        "-v",
        "SHOW_CONTEXT=always",
        "-d",
        conninfo,
    ]);
    match stdin {
        Some(_) => cmd.args(["-f", "-"]),
        None => cmd.args(["-c", sql]),
    };
    // A server-side bound too (the same on both servers); the client's is below.
    cmd.env("PGOPTIONS", "-c statement_timeout=60s")
        .env("PGCONNECT_TIMEOUT", "30")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn psql");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes())
            .expect("write psql's stdin");
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for psql") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("psql did not finish in {DEADLINE:?}: {conninfo}: {sql}{stdin:?}");
        }
        sleep(Duration::from_millis(20));
    };
    format!(
        "exit: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        status.code(),
        String::from_utf8_lossy(&out.join().unwrap()),
        String::from_utf8_lossy(&err.join().unwrap())
    )
}

fn conninfo(node: &Node, via: Via) -> String {
    match via {
        Via::Sql => node.conninfo("postgres"),
        Via::Walsender => format!("{} replication=database", node.conninfo("postgres")),
    }
}

/// What must differ between two servers: their ports and data directories.
fn normalise(text: &str, node: &Node) -> String {
    text.replace(&node.datadir().display().to_string(), "<datadir>")
        .replace(&node.logfile.display().to_string(), "<logfile>")
        .replace(&node.port.to_string(), "<port>")
        .replace(&node.name, "<node>")
}

/// Fails if the postmaster of `node` was not started with RUST_BACKTRACE=1.
fn assert_rust_backtrace_in_environment(node: &Node) {
    let pid = node.postmaster_pid();
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("read the postmaster's environ");
    assert!(
        environ.split(|b| *b == 0).any(|v| v == b"RUST_BACKTRACE=1"),
        "the postmaster of {} (pid {pid}) runs without RUST_BACKTRACE=1",
        node.name
    );
}

/// For failure messages only (comparisons use the raw text): a long run of
/// Rust backtrace frames is shown as its first and last lines.
fn shorten_backtraces(text: &str) -> String {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split_once(':')
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        while i < lines.len() && is_frame(lines[i]) {
            i += 1;
        }
        if i - start > 8 {
            out.extend_from_slice(&lines[start..start + 4]);
            out.push("   [... Rust backtrace frames elided in this message ...]");
            out.extend_from_slice(&lines[i - 2..i]);
        } else {
            out.extend_from_slice(&lines[start..i]);
        }
        if i < lines.len() && !is_frame(lines[i]) {
            out.push(lines[i]);
            i += 1;
        }
    }
    out.join("\n") + "\n"
}

/// Output that would betray Rust: a panic message, a backtrace, a source location.
fn rust_traces(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    ["panicked", "backtrace", "stack backtrace", ".rs:"]
        .into_iter()
        .filter(|needle| lower.contains(needle))
        .collect()
}

/// The tests set RUST_BACKTRACE in this process's environment while they
/// start their servers: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs every case on both servers; the differences (or Rust showing through).
/// `expect_fields`: each case's reference output must show its fields (on a
/// standby most statements fail earlier, read-only).
fn compare(with: &Node, without: &Node, expect_fields: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for case in CASES {
        let got = normalise(
            &run_psql(&conninfo(with, case.via), case.sql, case.stdin),
            with,
        );
        let want = normalise(
            &run_psql(&conninfo(without, case.via), case.sql, case.stdin),
            without,
        );
        let statement = case.stdin.unwrap_or(case.sql);
        let missing: Vec<&str> = case
            .expect
            .iter()
            .copied()
            .filter(|e| !want.contains(e))
            .collect();
        // The reference itself must show the fields, or the comparison proves nothing.
        assert!(
            !expect_fields || missing.is_empty(),
            "{}: the server without the library does not show {missing:?} for\n  {statement}\n{want}",
            case.name
        );
        let traces = rust_traces(&got);
        if got != want || !traces.is_empty() {
            failures.push(format!(
                "=== {} ===\n  {statement}\n{}--- with the library ---\n{got}\n--- without the library ---\n{want}",
                case.name,
                if traces.is_empty() {
                    String::new()
                } else {
                    format!("Rust shows through: {traces:?}\n")
                },
                got = shorten_backtraces(&got),
            ));
        }
        assert!(
            rust_traces(&want).is_empty(),
            "{}: the reference output mentions Rust?\n{want}",
            case.name
        );
    }
    failures
}

#[test]
fn errors_are_the_same_with_and_without_the_library() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Whatever the library would print of a backtrace, it may.
    std::env::set_var("RUST_BACKTRACE", "1");
    let dir = TestDir::new("invisible_errors");

    let with = dir.primary("with_lib");
    with.append_conf("sync_logical_slot.standby_slot_names = 'standby1'");
    with.start();
    let standby = dir.standby("standby1", &with);
    standby.start();

    let without = dir.primary("without_lib");
    without.append_conf("shared_preload_libraries = ''");
    without.start();

    // Every server runs now: the test's own panics need no backtrace.
    std::env::remove_var("RUST_BACKTRACE");

    for node in [&with, &without] {
        assert_rust_backtrace_in_environment(node);
        node.sql(SCHEMA);
        node.sql(&diagnostics_functions());
        node.sql("SELECT pg_create_logical_replication_slot('td', 'test_decoding')");
        node.sql("SELECT pg_create_physical_replication_slot('phys')");
    }
    assert_eq!(
        with.sql("SHOW shared_preload_libraries"),
        "sync_logical_slot"
    );
    assert_eq!(without.sql("SHOW shared_preload_libraries"), "");
    // The library's hooks run without CREATE EXTENSION; make it anyway, as a
    // real primary would have it (after the schema: no OID may differ).
    with.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    assert!(
        without
            .try_sql("CREATE EXTENSION sync_logical_slot CASCADE")
            .is_err(),
        "the extension needs the library"
    );
    // The decoding functions on with_lib wait for standby1: it streams.
    with.poll_query_until(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'",
        "t",
    );
    standby.wait_for_catchup(&with);

    let mut failures = compare(&with, &without, true);
    // An error raised inside the library's own Rust code (a statement timeout
    // cancelling the long poll, through pgrx's guard) shows no Rust either:
    // the server process runs with RUST_BACKTRACE=1, the library turns
    // backtraces off.
    let cancelled = run_psql(
        &format!(
            "{} options='-c statement_timeout=300'",
            with.conninfo("postgres")
        ),
        "SELECT sync_logical_slot_wait_for_change('name_like:%', 'none', sync_logical_slot_wait_for_change('name_like:%', 'none', 0, 0), 10000)",
        None,
    );
    assert!(
        cancelled.contains("57014") && cancelled.contains("statement timeout"),
        "the long poll was not cancelled by its statement timeout:\n{cancelled}"
    );
    if !rust_traces(&cancelled).is_empty() || cancelled.contains("DETAIL:") {
        failures.push(format!(
            "=== a cancelled long poll ===\nRust shows through:\n{}",
            shorten_backtraces(&cancelled)
        ));
    }
    // Nor in the servers' logs.
    for node in [&with, &without] {
        let log = node.log_since(0);
        let traces = rust_traces(&log);
        if !traces.is_empty() {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !rust_traces(l).is_empty())
                .take(5)
                .collect();
            failures.push(format!(
                "=== the server log of {} ===\nRust shows through: {traces:?}, e.g.\n{}",
                node.name,
                lines.join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences with the library loaded (of {} statements and 2 server logs):\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

/// The same on standbys (on 16 the library's executor hook looks at every
/// statement there, for decoding calls that name a copy): a standby with the
/// library (copying nothing, so that slot names mean the same on both) and one
/// without, each streaming from its own primary.
#[test]
fn errors_on_a_standby_are_the_same_with_and_without_the_library() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("RUST_BACKTRACE", "1");
    let dir = TestDir::new("invisible_errors_standby");
    let primary_with = dir.primary("primary_with");
    primary_with.start();
    let primary_without = dir.primary("primary_without");
    primary_without.append_conf("shared_preload_libraries = ''");
    primary_without.start();
    for node in [&primary_with, &primary_without] {
        node.sql(SCHEMA);
        node.sql(&diagnostics_functions());
    }
    let with = dir.standby("standby_with", &primary_with);
    with.append_conf("sync_logical_slot.slot_names = 'nothing_selected'");
    with.start();
    let without = dir.standby("standby_without", &primary_without);
    without.append_conf("shared_preload_libraries = ''");
    without.start();
    std::env::remove_var("RUST_BACKTRACE");
    for node in [&with, &without] {
        assert_rust_backtrace_in_environment(node);
        assert_eq!(node.sql("SELECT pg_is_in_recovery()"), "t");
    }
    with.wait_for_catchup(&primary_with);
    without.wait_for_catchup(&primary_without);
    assert_eq!(
        with.sql("SHOW shared_preload_libraries"),
        "sync_logical_slot"
    );
    assert_eq!(without.sql("SHOW shared_preload_libraries"), "");

    let mut failures = compare(&with, &without, false);
    for node in [&with, &without] {
        let traces = rust_traces(&node.log_since(0));
        if !traces.is_empty() {
            failures.push(format!(
                "=== the server log of {} ===\nRust shows through: {traces:?}",
                node.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences on a standby with the library loaded (of {} statements):\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}
