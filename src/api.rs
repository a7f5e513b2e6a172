//! SQL functions and the status view. Every function is REVOKEd from PUBLIC.
//! Those that change slots are superuser-only (checked inside too); the
//! status view and the readiness functions are granted to pg_monitor (and
//! to whom the DBA grants them); the long poll and the file readers that the
//! standbys' workers call on the primary are granted to the workers' role by
//! the DBA.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::status;
use crate::types::Lsn;

/// The rows of `sync_logical_slot_status`, from the worker's shared state.
/// Positions and xids come as text and are cast by the view.
#[allow(clippy::type_complexity)]
#[pg_extern(name = "sync_logical_slot_status_rows", volatile, parallel_unsafe)]
fn status_rows_0_2() -> TableIterator<
    'static,
    (
        name!(slot_name, Option<String>),
        name!(database, Option<String>),
        name!(plugin, Option<String>),
        name!(state, String),
        name!(ready, bool),
        name!(remote_restart_lsn, Option<String>),
        name!(remote_confirmed_flush_lsn, Option<String>),
        name!(remote_catalog_xmin, Option<String>),
        name!(local_restart_lsn, Option<String>),
        name!(local_confirmed_flush_lsn, Option<String>),
        name!(local_catalog_xmin, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(last_sync_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(verdict_source, Option<String>),
        name!(verified_at, Option<TimestampWithTimeZone>),
    ),
> {
    let lsn = |l: crate::types::Lsn| l.is_valid().then(|| l.to_string());
    let xid = |x: crate::types::Xid| x.is_valid().then(|| x.to_string());
    // A worker that cannot run at all (its database does not exist) says so
    // in a row of its own, with no slot name.
    let worker_row = status::worker_error().map(|why| {
        (
            None,
            None,
            None,
            crate::plan::State::Error.as_str().to_string(),
            false,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(why),
            None,
            None,
        )
    });
    let rows: Vec<_> = worker_row
        .into_iter()
        .chain(status::read().into_iter().map(|s| {
            let (lr, lc, lx) = match s.local {
                Some((r, c, x)) => (lsn(r), lsn(c), xid(x)),
                None => (None, None, None),
            };
            // A copy waiting for the primary's slot (not persistent yet) has
            // no meaningful distance to it: its positions are the standby's
            // own reservation.
            let lag = s
                .local
                .filter(|_| s.state != crate::plan::State::WaitingForRemote)
                .and_then(|(_, c, _)| {
                    (c.is_valid() && s.remote_confirmed_flush_lsn.is_valid())
                        .then(|| s.remote_confirmed_flush_lsn.0.saturating_sub(c.0) as i64)
                });
            let timestamp = |t: i64| {
                (t != 0)
                    .then(|| TimestampWithTimeZone::try_from(t).ok())
                    .flatten()
            };
            let at = timestamp(s.last_sync_at);
            let verified = timestamp(s.verified_at);
            let source = (s.verified_at != 0 || s.from_disk)
                .then(|| if s.from_disk { "disk" } else { "pass" }.to_string());
            (
                Some(s.name),
                Some(s.database),
                Some(s.plugin),
                s.state.as_str().to_string(),
                s.ready,
                lsn(s.remote_restart_lsn),
                lsn(s.remote_confirmed_flush_lsn),
                xid(s.remote_catalog_xmin),
                lr,
                lc,
                lx,
                lag,
                at,
                s.last_error,
                source,
                verified,
            )
        }))
        .collect();
    TableIterator::new(rows)
}

// ---------------------------------------------------------------------------
// Errors. A function that takes a password must not let PostgreSQL print the
// statement (or an SPI statement in the error context) to the log with it:
// while such a function runs, the next ERROR is marked hide_stmt/hide_ctx by
// an emit_log_hook.

static HIDE_NEXT_ERROR: AtomicBool = AtomicBool::new(false);
static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// Installs the log hook (from _PG_init).
pub fn init() {
    // SAFETY: hooks are installed once, in the postmaster, before any backend.
    unsafe {
        PREV_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hide_statement_hook);
    }
}

unsafe extern "C-unwind" fn hide_statement_hook(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes a valid ErrorData; only flags are changed.
    unsafe {
        if HIDE_NEXT_ERROR.load(Ordering::Relaxed) && (*edata).elevel >= pg_sys::PGERROR as i32 {
            (*edata).hide_stmt = true;
            (*edata).hide_ctx = true;
            HIDE_NEXT_ERROR.store(false, Ordering::Relaxed);
        }
        if let Some(prev) = PREV_EMIT_LOG_HOOK {
            prev(edata);
        }
    }
}

fn fail(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut r = ErrorReport::new(code, message.into(), "sync_logical_slot");
    if let Some(h) = hint {
        r = r.set_hint(h.to_string());
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

fn in_recovery() -> bool {
    // SAFETY: reads shared state.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Functions that only make sense on a standby.
fn require_standby(use_instead: &str) {
    if !in_recovery() {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this server is not a standby",
            Some(use_instead),
        );
    }
}

fn require_superuser(function: &str) {
    // SAFETY: reads the session's user.
    if !unsafe { pg_sys::superuser() } {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for function {function}"),
            Some("Only superusers may call the functions of sync_logical_slot."),
        );
    }
}

// ---------------------------------------------------------------------------
// failover_logical_slot_init: the seed-compatible set-up, on the primary.

/// The foreign server the set-up creates, and that sync_logical_slot.master_fdw names.
pub const FOREIGN_SERVER: &str = "master_fdw";

/// Checked input of failover_logical_slot_init (pure, for unit tests).
#[derive(Debug, PartialEq, Eq)]
pub struct InitArgs {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub password: String,
}

impl InitArgs {
    /// Err: (SQLSTATE is null_value_not_allowed when .0, else invalid_parameter_value, message).
    pub fn check(
        host: Option<&str>,
        port: Option<&str>,
        dbname: Option<&str>,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<InitArgs, (bool, String)> {
        let need = |v: Option<&str>, what: &str| {
            v.map(str::to_string)
                .ok_or_else(|| (true, format!("{what} must not be NULL")))
        };
        let (host, port, dbname, username, password) = (
            need(host, "host")?,
            need(port, "port")?,
            need(dbname, "dbname")?,
            need(username, "username")?,
            need(password, "password")?,
        );
        for (value, what) in [
            (&host, "host"),
            (&dbname, "dbname"),
            (&username, "username"),
        ] {
            if value.trim().is_empty() {
                return Err((false, format!("{what} must not be empty")));
            }
        }
        let port = match port.trim().parse::<u16>() {
            Ok(p) if p >= 1 && port.trim().bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return Err((
                    false,
                    format!("invalid port \"{port}\": it must be a number from 1 to 65535"),
                ))
            }
        };
        Ok(InitArgs {
            host: host.trim().to_string(),
            port,
            dbname,
            username,
            password,
        })
    }
}

/// The postgresql.conf lines every standby needs for the seed-compatible
/// set-up, as failover_logical_slot_init returns them (pure, for unit tests):
/// settings, with a comment where a value is the DBA's to choose. Appended
/// as they are to a standby's postgresql.conf, they are all it needs besides
/// what any streaming standby has (primary_conninfo, standby.signal).
pub fn standby_conf_lines(database: &str) -> Vec<String> {
    vec![
        "shared_preload_libraries = 'sync_logical_slot'\t# with any libraries already listed there".into(),
        "wal_level = logical\t# a standby that holds logical slots needs it to start".into(),
        "hot_standby_feedback = on".into(),
        "#primary_slot_name = 'standby1'\t# required: this standby's physical slot on the primary (pg_basebackup -R -S <slot> writes it)".into(),
        format!(
            "sync_logical_slot.database = '{}'",
            database.replace('\\', "\\\\").replace('\'', "''")
        ),
        format!("sync_logical_slot.master_fdw = '{FOREIGN_SERVER}'"),
        "sync_logical_slot.standby_slot_names = ''\t# applies once promoted, where a named slot that is missing holds every logical consumer: then name its own standbys' slots".into(),
    ]
}

/// A SQL string literal, as PostgreSQL's quote_literal() writes it (pure Rust,
/// so that unit tests need no server).
fn literal(v: &str) -> String {
    let body = v.replace('\'', "''");
    if v.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// `<create> OPTIONS (k 'v', ...)` when the object does not exist (`present`
/// None), else `<alter> OPTIONS (SET|ADD ..., DROP ...)`.
fn upsert_options(
    create: &str,
    alter: &str,
    present: Option<Vec<Option<String>>>,
    wanted: &[(&str, &str)],
    drop: &[&str],
) -> Result<(), pgrx::spi::Error> {
    match present {
        None => Spi::run(&format!(
            "{create} OPTIONS ({})",
            wanted
                .iter()
                .map(|(k, v)| format!("{k} {}", literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(opts) => {
            let opts: Vec<String> = opts.into_iter().flatten().collect();
            Spi::run(&format!(
                "{alter} OPTIONS ({})",
                option_list(&opts, wanted, drop)
            ))
        }
    }
}

/// `ALTER ... OPTIONS (SET k 'v' | ADD k 'v', ...)`: SET for options present, ADD for new ones.
fn option_list(present: &[String], wanted: &[(&str, &str)], drop: &[&str]) -> String {
    let has = |k: &str| {
        present
            .iter()
            .any(|o| o.split_once('=').map(|(a, _)| a) == Some(k))
    };
    let mut items: Vec<String> = wanted
        .iter()
        .map(|(k, v)| format!("{} {k} {}", if has(k) { "SET" } else { "ADD" }, literal(v)))
        .collect();
    items.extend(drop.iter().filter(|k| has(k)).map(|k| format!("DROP {k}")));
    items.join(", ")
}

/// `CREATE USER MAPPING` (when `present` is None) or `ALTER USER MAPPING` for
/// `role` on master_fdw with these options, built as a parse tree and run
/// through `ProcessUtility` (so event triggers and utility hooks see it as
/// usual) with a statement text that names the options but holds none of
/// their values: the password is in no statement that a log, an audit hook
/// or pg_stat_statements can see. Only the caller's own statement holds it.
fn upsert_user_mapping(
    role: &str,
    present: Option<Vec<Option<String>>>,
    wanted: &[(&str, &str)],
    drop: &[&str],
) {
    let present: Option<Vec<String>> = present.map(|o| o.into_iter().flatten().collect());
    let has = |k: &str| {
        present.as_ref().is_some_and(|p| {
            p.iter()
                .any(|o| o.split_once('=').map(|(a, _)| a) == Some(k))
        })
    };
    let mut words = Vec::new();
    let cstr = |v: &str| -> *mut std::ffi::c_char {
        let c = std::ffi::CString::new(v).expect("options were checked for NUL bytes");
        // SAFETY: pstrdup copies into the current memory context.
        unsafe { pg_sys::pstrdup(c.as_ptr()) }
    };
    // SAFETY: nodes built in the current memory context, as the parser
    // would build them, and handed to ProcessUtility as a utility statement.
    unsafe {
        let mut options: *mut pg_sys::List = std::ptr::null_mut();
        for (k, v) in wanted {
            let action = match (&present, has(k)) {
                (None, _) => pg_sys::DefElemAction::DEFELEM_UNSPEC,
                (Some(_), true) => pg_sys::DefElemAction::DEFELEM_SET,
                (Some(_), false) => pg_sys::DefElemAction::DEFELEM_ADD,
            };
            words.push(match action {
                pg_sys::DefElemAction::DEFELEM_SET => format!("SET {k}"),
                pg_sys::DefElemAction::DEFELEM_ADD => format!("ADD {k}"),
                _ => k.to_string(),
            });
            let def = pg_sys::makeDefElemExtended(
                std::ptr::null_mut(),
                cstr(k),
                pg_sys::makeString(cstr(v)).cast(),
                action,
                -1,
            );
            options = pg_sys::lappend(options, def.cast());
        }
        for k in drop.iter().filter(|k| has(k)) {
            words.push(format!("DROP {k}"));
            let def = pg_sys::makeDefElemExtended(
                std::ptr::null_mut(),
                cstr(k),
                std::ptr::null_mut(),
                pg_sys::DefElemAction::DEFELEM_DROP,
                -1,
            );
            options = pg_sys::lappend(options, def.cast());
        }
        let user =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RoleSpec>()) as *mut pg_sys::RoleSpec;
        (*user).type_ = pg_sys::NodeTag::T_RoleSpec;
        (*user).roletype = pg_sys::RoleSpecType::ROLESPEC_CSTRING;
        (*user).rolename = cstr(role);
        (*user).location = -1;
        let (node, verb): (*mut pg_sys::Node, &str) = if present.is_none() {
            let stmt = pg_sys::palloc0(std::mem::size_of::<pg_sys::CreateUserMappingStmt>())
                as *mut pg_sys::CreateUserMappingStmt;
            (*stmt).type_ = pg_sys::NodeTag::T_CreateUserMappingStmt;
            (*stmt).user = user;
            (*stmt).servername = cstr(FOREIGN_SERVER);
            (*stmt).options = options;
            (stmt.cast(), "CREATE")
        } else {
            let stmt = pg_sys::palloc0(std::mem::size_of::<pg_sys::AlterUserMappingStmt>())
                as *mut pg_sys::AlterUserMappingStmt;
            (*stmt).type_ = pg_sys::NodeTag::T_AlterUserMappingStmt;
            (*stmt).user = user;
            (*stmt).servername = cstr(FOREIGN_SERVER);
            (*stmt).options = options;
            (stmt.cast(), "ALTER")
        };
        if options.is_null() {
            return;
        }
        let text = format!(
            "{verb} USER MAPPING FOR {} SERVER {FOREIGN_SERVER} OPTIONS ({})",
            pgrx::spi::quote_identifier(role),
            words.join(", ")
        );
        let pstmt =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannedStmt>()) as *mut pg_sys::PlannedStmt;
        (*pstmt).type_ = pg_sys::NodeTag::T_PlannedStmt;
        (*pstmt).commandType = pg_sys::CmdType::CMD_UTILITY;
        (*pstmt).canSetTag = true;
        (*pstmt).utilityStmt = node;
        (*pstmt).stmt_location = -1;
        (*pstmt).stmt_len = 0;
        // As parse analysis would give it one: statistics (pg_stat_statements)
        // record the statement, under its text without values.
        (*pstmt).queryId = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            h.finish().max(1)
        };
        pg_sys::ProcessUtility(
            pstmt,
            cstr(&text),
            false,
            pg_sys::ProcessUtilityContext::PROCESS_UTILITY_QUERY,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            pg_sys::None_Receiver,
            std::ptr::null_mut(),
        );
        pg_sys::CommandCounterIncrement();
    }
}

/// Creates (or updates) the foreign server master_fdw and the user mapping
/// the standby's worker uses, and returns the postgresql.conf lines to add.
#[pg_extern(volatile, parallel_unsafe)]
fn failover_logical_slot_init(
    host: Option<&str>,
    port: Option<&str>,
    dbname: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
) -> SetOfIterator<'static, String> {
    // From here on, an ERROR never prints the statement (it holds the password).
    HIDE_NEXT_ERROR.store(true, Ordering::Relaxed);
    require_superuser("failover_logical_slot_init");
    if in_recovery() {
        fail(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "failover_logical_slot_init() must run on the primary server",
            Some("Run it on the primary: the foreign server and user mapping reach every standby through replication."),
        );
    }
    let args = match InitArgs::check(host, port, dbname, username, password) {
        Ok(a) => a,
        Err((null, message)) => fail(
            if null {
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED
            } else {
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
            },
            message,
            Some("Call failover_logical_slot_init(host, port, dbname, username, password) with the primary's address, as the standbys reach it."),
        ),
    };
    let port = args.port.to_string();
    let server_options: Option<Vec<Option<String>>> = Spi::get_one(&format!(
        "SELECT coalesce(srvoptions, '{{}}') FROM pg_catalog.pg_foreign_server WHERE srvname = {}",
        pgrx::spi::quote_literal(FOREIGN_SERVER)
    ))
    .unwrap_or(None);
    let server = [
        ("host", args.host.as_str()),
        ("port", port.as_str()),
        ("dbname", args.dbname.as_str()),
    ];
    upsert_options(
        &format!("CREATE SERVER {FOREIGN_SERVER} FOREIGN DATA WRAPPER postgres_fdw"),
        &format!("ALTER SERVER {FOREIGN_SERVER}"),
        server_options,
        &server,
        &[],
    )
    .unwrap_or_else(|e| {
        fail(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not set up foreign server \"{FOREIGN_SERVER}\": {e}"),
            None,
        )
    });

    // The mapping is for the role the standby's worker runs as: the bootstrap superuser.
    let role: String = Spi::get_one("SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10")
        .ok()
        .flatten()
        .unwrap_or_else(|| "postgres".into());
    let mapping_options: Option<Vec<Option<String>>> = Spi::get_one(&format!(
        "SELECT coalesce(um.umoptions, '{{}}') FROM pg_catalog.pg_user_mapping um
           JOIN pg_catalog.pg_foreign_server s ON s.oid = um.umserver
          WHERE s.srvname = {} AND um.umuser = 10",
        pgrx::spi::quote_literal(FOREIGN_SERVER)
    ))
    .unwrap_or(None);
    let mut mapping = vec![("user", args.username.as_str())];
    if !args.password.is_empty() {
        mapping.push(("password", args.password.as_str()));
    }
    let drop: &[&str] = if args.password.is_empty() {
        &["password"]
    } else {
        &[]
    };
    upsert_user_mapping(&role, mapping_options, &mapping, drop);

    let database: String = Spi::get_one("SELECT current_database()::text")
        .ok()
        .flatten()
        .unwrap_or_default();
    HIDE_NEXT_ERROR.store(false, Ordering::Relaxed);
    SetOfIterator::new(standby_conf_lines(&database))
}

// ---------------------------------------------------------------------------
// Readiness and passes on demand (standby).

/// How long a session waits for the worker to answer a request for a pass.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// Asks the worker for a pass and waits for its answer.
fn pass_now() -> (u32, u32, u32) {
    let Some(seq) = status::request() else {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the sync_logical_slot worker is not running",
            Some("Check the server log; the worker is restarted 5 s after it exits."),
        );
    };
    let deadline = Instant::now() + ANSWER_DEADLINE;
    loop {
        if let Some(answer) = status::answer_for(seq) {
            return answer.unwrap_or_else(|e| {
                fail(
                    PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION,
                    format!("the sync pass did not complete: {e}"),
                    Some("The worker retries on its own; sync_logical_slot_status shows each slot's state."),
                )
            });
        }
        if Instant::now() > deadline {
            fail(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!(
                    "the sync_logical_slot worker did not answer within {} s",
                    ANSWER_DEADLINE.as_secs()
                ),
                Some("It may be waiting on an unresponsive primary server; see its line in pg_stat_activity."),
            );
        }
        wait_a_little();
    }
}

fn wait_a_little() {
    // SAFETY: waits on this session's latch; interrupts are checked after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            20,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

// ---------------------------------------------------------------------
// Version 0.1.0's functions (a rolling upgrade)
//
// A database may still hold the extension's 0.1.0 objects while the library
// is already newer: the new library goes on the standbys first, and
// ALTER EXTENSION sync_logical_slot UPDATE runs on the primary later. Those
// objects call these C symbols, each with 0.1.0's signature; the current
// SQL never declares them (sql = false), and the worker's log says an
// update is due (worker.rs, check_extension_version).

/// 0.1.0's `sync_logical_slot_ready()`: every selected slot.
#[pg_extern(sql = false, volatile, parallel_safe)]
fn sync_logical_slot_ready() -> bool {
    ready_0_2(None)
}

/// 0.1.0's `sync_logical_slot_wait_ready(interval)`.
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn sync_logical_slot_wait_ready(timeout: Option<Interval>) -> bool {
    wait_ready_0_2(timeout, None)
}

/// 0.1.0's status rows: those of today without verdict_source and verified_at.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn sync_logical_slot_status_rows() -> TableIterator<
    'static,
    (
        name!(slot_name, Option<String>),
        name!(database, Option<String>),
        name!(plugin, Option<String>),
        name!(state, String),
        name!(ready, bool),
        name!(remote_restart_lsn, Option<String>),
        name!(remote_confirmed_flush_lsn, Option<String>),
        name!(remote_catalog_xmin, Option<String>),
        name!(local_restart_lsn, Option<String>),
        name!(local_confirmed_flush_lsn, Option<String>),
        name!(local_catalog_xmin, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(last_sync_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
    ),
> {
    TableIterator::new(
        status_rows_0_2().map(|(a, b, c, d, e, f, g, h, i, j, k, l, m, n, _, _)| {
            (a, b, c, d, e, f, g, h, i, j, k, l, m, n)
        }),
    )
}

/// Uninstalling: drops every copy this extension made on this standby, with
/// the readiness records, and returns how many. Refused on a primary (its
/// logical slots are its consumers' own) and while `slot_names` selects
/// slots (the worker would copy them again). A copy in use (a temporary one
/// the worker holds while it waits; any copy mid-pass) is left and named in
/// a WARNING: temporary copies end with the worker.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_drop_copies() -> i32 {
    require_superuser("sync_logical_slot_drop_copies");
    require_standby(
        "On a primary the logical slots are the consumers' own: drop one with pg_drop_replication_slot() if that is what you mean.",
    );
    if crate::guc::slot_filter().is_ok_and(|f| !f.selectors.is_empty()) {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "sync_logical_slot.slot_names = '{}' still selects slots: the sync worker would copy them again",
                crate::guc::slot_names()
            ),
            Some("Set sync_logical_slot.slot_names = '' on this standby, reload (SELECT pg_reload_conf()), and call this function again in a moment, once the worker has taken the new value."),
        );
    }
    // Records first: a copy is never left with a verdict that outlives it.
    crate::readiness::forget_all();
    let mut dropped = 0;
    let mut left = Vec::new();
    for name in crate::slot::local_logical_slots()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| crate::slot::is_ours(n))
    {
        // Looked at again just before: the worker may have dropped it, or
        // be holding it, meanwhile.
        match crate::slot::local_logical_slots()
            .into_iter()
            .find(|l| l.name == name)
        {
            None => {}
            Some(l) if l.active_pid != 0 => left.push(format!(
                "\"{name}\" (in use by PID {}{})",
                l.active_pid,
                if l.persistent {
                    ""
                } else {
                    ", a temporary copy the worker holds: it ends with the worker"
                }
            )),
            Some(_) => {
                crate::slot::drop_slot(&name);
                dropped += 1;
            }
        }
    }
    crate::status::clear();
    if !left.is_empty() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("{} cop{} left: {}", left.len(), if left.len() == 1 { "y" } else { "ies" }, left.join(", ")),
            "sync_logical_slot",
        )
        .set_hint("A temporary copy ends when the worker stops (restart without the library, README \"Uninstalling\" step 3); call this function again for any other.")
        .report(PgLogLevel::WARNING);
    }
    dropped
}

/// One sync pass now, through the worker (passes never overlap).
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_sync_now() -> TableIterator<
    'static,
    (
        name!(created, i32),
        name!(advanced, i32),
        name!(dropped, i32),
    ),
> {
    require_superuser("sync_logical_slot_sync_now");
    require_standby("On a primary there is nothing to sync.");
    let (c, a, d) = pass_now();
    TableIterator::once((c as i32, a as i32, d as i32))
}

/// A readiness answer: the verdict, how old it is, where it comes from.
struct Verdict {
    ready: bool,
    /// Every verdict considered was read from disk (no pass since the start).
    from_disk: bool,
    /// TimestampTz of the oldest verdict considered (0: none).
    verified_at: i64,
    not_ready: Vec<String>,
    detail: String,
}

/// Whether the copies are ready: of the slots named, or else of every slot
/// the filters select on the primary (as of the worker's last pass, or of
/// the records on disk until a pass reaches the primary), leaving out idle
/// slots when `sync_logical_slot.ready_ignores_idle_slots` is on. The copies
/// must still exist, persistent and valid.
fn verdict(slots: Option<&[String]>) -> Verdict {
    let rows = status::read();
    let from_disk = status::disk_loaded();
    let unknown = |detail: &str| Verdict {
        ready: false,
        from_disk: false,
        verified_at: 0,
        not_ready: slots.map(<[String]>::to_vec).unwrap_or_default(),
        detail: detail.into(),
    };
    if status::passes() == 0 && !from_disk && rows.is_empty() {
        return unknown("no verdict yet: the worker has not completed a sync pass since it started, and no verdict of a pass before is kept on disk");
    }
    // More slots than the table shows: nothing can be vouched for.
    if !status::complete() {
        return unknown("more slots than the status table holds: readiness cannot be told");
    }
    let locals = crate::slot::local_logical_slots();
    let usable = |row: &status::SlotStatus| {
        row.ready
            && locals
                .iter()
                .any(|l| l.name == row.name && l.persistent && l.invalidated.is_none())
    };
    let mut not_ready = Vec::new();
    let mut verified_at = i64::MAX;
    let mut idle_left_out = 0;
    match slots {
        Some(names) => {
            for name in names {
                match rows.iter().find(|r| &r.name == name) {
                    Some(row) => {
                        verified_at = verified_at.min(row.verified_at);
                        if !usable(row) {
                            not_ready.push(name.clone());
                        }
                    }
                    None => not_ready.push(name.clone()),
                }
            }
        }
        None => {
            let ignore_idle = crate::guc::ready_ignores_idle_slots();
            for row in &rows {
                if ignore_idle && row.idle && !row.ready {
                    idle_left_out += 1;
                    continue;
                }
                verified_at = verified_at.min(row.verified_at);
                if !usable(row) {
                    not_ready.push(row.name.clone());
                }
            }
        }
    }
    let verified_at = if verified_at == i64::MAX {
        0
    } else {
        verified_at
    };
    let mut detail = match not_ready.len() {
        0 => "every copy asked about is ready".to_string(),
        n => format!(
            "{n} cop{} not ready (see sync_logical_slot_status)",
            if n == 1 { "y" } else { "ies" }
        ),
    };
    if from_disk {
        detail.push_str("; verdicts read from disk: no sync pass has reached the primary since this server started");
    }
    if idle_left_out > 0 {
        detail.push_str(&format!(
            "; {idle_left_out} idle slot(s) left out (sync_logical_slot.ready_ignores_idle_slots)"
        ));
    }
    Verdict {
        ready: not_ready.is_empty(),
        from_disk,
        verified_at,
        not_ready,
        detail,
    }
}

/// The slot list of the readiness functions: NULL (every selected slot) or
/// names, none NULL, at least one.
fn slot_list(slots: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    if slots.as_ref().is_some_and(Vec::is_empty) {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "slots must name at least one slot",
            Some("Pass NULL for every slot the filters select."),
        );
    }
    slots.map(|v| {
        v.into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    fail(
                        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        "slots must not contain NULL",
                        Some("Pass slot names, or NULL for every slot the filters select."),
                    )
                })
            })
            .collect()
    })
}

#[pg_extern(name = "sync_logical_slot_ready", volatile, parallel_safe)]
fn ready_0_2(slots: default!(Option<Vec<Option<String>>>, "NULL")) -> bool {
    let slots = slot_list(slots);
    require_standby("Readiness is asked of a standby before it is promoted.");
    verdict(slots.as_deref()).ready
}

#[pg_extern(name = "sync_logical_slot_wait_ready", volatile, parallel_unsafe)]
fn wait_ready_0_2(
    timeout: Option<Interval>,
    slots: default!(Option<Vec<Option<String>>>, "NULL"),
) -> bool {
    let micros = match timeout {
        Some(t) if !t.is_negative() => t.as_micros(),
        _ => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be a non-negative interval",
            Some("For example: SELECT sync_logical_slot_wait_ready('30s');"),
        ),
    };
    let slots = slot_list(slots);
    require_standby("Readiness is asked of a standby before it is promoted.");
    let deadline = Instant::now() + Duration::from_micros(micros.clamp(0, u64::MAX as i128) as u64);
    loop {
        // Promoted meanwhile: readiness no longer means anything here.
        require_standby("Readiness is asked of a standby before it is promoted.");
        if verdict(slots.as_deref()).ready {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        wait_a_little();
    }
}

/// The readiness verdict with its age and source, for an HA manager's log.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn sync_logical_slot_readiness(
    slots: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ready, bool),
        name!(verdict_source, Option<String>),
        name!(verified_at, Option<TimestampWithTimeZone>),
        name!(verdict_age, Option<Interval>),
        name!(not_ready, Vec<String>),
        name!(detail, String),
    ),
> {
    let slots = slot_list(slots);
    require_standby("Readiness is asked of a standby before it is promoted.");
    let v = verdict(slots.as_deref());
    let known = v.verified_at != 0;
    let source =
        (known || v.from_disk).then(|| if v.from_disk { "disk" } else { "pass" }.to_string());
    let at = known
        .then(|| TimestampWithTimeZone::try_from(v.verified_at).ok())
        .flatten();
    let age = known.then(|| {
        // SAFETY: reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        Interval::from_micros((now - v.verified_at).max(0))
    });
    TableIterator::once((v.ready, source, at, age, v.not_ready, v.detail))
}

/// Copies or advances one slot now (a pass through the worker) and returns its state.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_sync_slot_internal(slot_name: &str) -> String {
    require_superuser("sync_logical_slot_sync_slot");
    require_standby(
        "On a primary, use PostgreSQL's own functions, such as pg_replication_slot_advance().",
    );
    let filter = match crate::guc::slot_filter() {
        Ok(f) => f,
        Err(why) => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("sync_logical_slot.slot_names is invalid: {why}"),
            Some("Correct it in postgresql.conf and reload."),
        ),
    };
    if !filter.may_select_name(slot_name) {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "replication slot \"{slot_name}\" is not selected by sync_logical_slot.slot_names"
            ),
            Some("Add it to sync_logical_slot.slot_names on this standby and reload."),
        );
    }
    pass_now();
    match status::read().into_iter().find(|r| r.name == slot_name) {
        Some(row) => row.state.as_str().to_string(),
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("the primary server has no logical slot \"{slot_name}\" that sync_logical_slot.slot_names selects"),
            Some("Check the slot's name and plugin on the primary (pg_replication_slots) against sync_logical_slot.slot_names."),
        ),
    }
}

/// Moves a persistent copy's confirmed_flush_lsn forward to `upto` (never
/// back, never past the flushed WAL), e.g. to a consumer's own position
/// before promotion. Returns where it ends.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_advance_internal(slot_name: &str, upto: i64) -> i64 {
    require_superuser("sync_logical_slot_advance");
    require_standby("On a primary, use pg_replication_slot_advance().");
    match crate::slot::advance_confirmed(slot_name, Lsn(upto as u64)) {
        Ok(lsn) => lsn.0 as i64,
        Err(e) => fail(e.sqlstate(), e.to_string(), e.hint()),
    }
}

// ---------------------------------------------------------------------------
// The long poll, on the primary: a standby's worker waits here for a slot to move.

/// The longest one call waits (the worker asks for at most `naptime`).
const WAIT_FOR_CHANGE_MAX: Duration = Duration::from_secs(60);
/// How often the client connection is checked while waiting.
const CLIENT_CHECK_EVERY: Duration = Duration::from_millis(100);

/// How often the slot array is looked at while waiting: every 1 ms for up
/// to 100 slots in use, longer in proportion above that (each look reads
/// every slot under its spinlock), 10 ms at most; and once nothing has moved
/// for `QUIET_AFTER`, five times less often (20 ms at most), so that an idle
/// primary pays little for the wait.
fn wait_for_change_interval(slots_in_use: usize, waited: Duration) -> Duration {
    let fast = Duration::from_millis((slots_in_use as u64 / 100).clamp(1, 10));
    if waited < QUIET_AFTER {
        fast
    } else {
        (fast * 5).min(Duration::from_millis(20))
    }
}

const QUIET_AFTER: Duration = Duration::from_millis(100);

/// Returns as soon as the positions of the logical slots that `slot_names`
/// selects, or the `catalog_xmin` of physical slot `standby_slot`, differ from
/// the fingerprint `since` (0: return at once), or after `timeout_ms`; returns
/// the fingerprint then. Reads shared memory only: nothing is written, no
/// catalog is read, and one call costs one query for the standby however
/// long it waits. Called by the standby's worker; callable by any role granted EXECUTE.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_wait_for_change(
    slot_names: &str,
    standby_slot: &str,
    since: i64,
    timeout_ms: i32,
) -> i64 {
    let filter = crate::types::SlotFilter::parse(slot_names).unwrap_or_else(|e| {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid slot_names \"{slot_names}\": {e}"),
            None,
        )
    });
    let timeout = Duration::from_millis(timeout_ms.max(0) as u64).min(WAIT_FOR_CHANGE_MAX);
    let select = |name: &str, plugin: &str| filter.selects(name, plugin);
    release_xmin_when_alone();
    let start = Instant::now();
    let mut checked_client = start;
    loop {
        let (now, slots_in_use) = crate::slot::fingerprint(standby_slot, &select);
        let now = now as i64;
        if now != since || start.elapsed() >= timeout {
            return now;
        }
        // SAFETY: waits on this backend's own latch; interrupts (cancel,
        // statement_timeout, terminate) are handled right after.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                wait_for_change_interval(slots_in_use, start.elapsed()).as_millis()
                    as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
        if checked_client.elapsed() >= CLIENT_CHECK_EVERY {
            checked_client = Instant::now();
            if !client_connected() {
                // Nobody reads the answer: end the call rather than wait on.
                return now;
            }
        }
    }
}

/// While it waits, the long poll must not hold back the primary's vacuum
/// horizon (a standby's worker waits here all the time). The statement's
/// snapshot is the only thing that would: this backend's `xmin` (what
/// `pg_stat_activity.backend_xmin` shows) is cleared when nothing can read
/// with that snapshot any more. That is the case when the call is the whole
/// statement, `SELECT sync_logical_slot_wait_for_change(...)` as its only
/// output, with no table (its plan reads no relation), in a transaction of
/// its own with no other portal open (no cursor, suspended portal or earlier
/// statement holds a snapshot), as the worker calls it: the function itself
/// reads only shared memory, and nothing reads after it in the statement.
/// Any other use keeps the snapshot, as every statement does. When the
/// statement's snapshot is released at its end, core may set `xmin` to that
/// snapshot's for a moment; nothing reads with it.
fn release_xmin_when_alone() {
    // SAFETY: reads this backend's portal and transaction state; writes this
    // backend's own PGPROC xmin, which core itself clears without a lock
    // (SnapshotResetXmin).
    unsafe {
        if pg_sys::IsTransactionBlock() || pg_sys::GetCurrentTransactionNestLevel() != 1 {
            return;
        }
        // No other portal that could still read with an older snapshot (a
        // suspended one in an extended-protocol pipeline).
        if !pg_sys::ThereAreNoReadyPortals() {
            return;
        }
        let portal = pg_sys::ActivePortal;
        if portal.is_null() || (*portal).stmts.is_null() || (*(*portal).stmts).length != 1 {
            return;
        }
        let stmt = (*(*(*portal).stmts).elements).ptr_value as *mut pg_sys::PlannedStmt;
        if stmt.is_null()
            || (*stmt).type_ != pg_sys::NodeTag::T_PlannedStmt
            || (*stmt).commandType != pg_sys::CmdType::CMD_SELECT
        {
            return;
        }
        // The call itself is the statement's only output column, not inside
        // another function that may read tables after it returns.
        let plan = (*stmt).planTree;
        if plan.is_null() || (*plan).type_ != pg_sys::NodeTag::T_Result {
            return;
        }
        let tlist = (*plan).targetlist;
        if tlist.is_null() || (*tlist).length != 1 {
            return;
        }
        let entry = (*(*tlist).elements).ptr_value as *mut pg_sys::TargetEntry;
        let mut expr = (*entry).expr as *mut pg_sys::FuncExpr;
        // The worker's call is cast to text (an I/O coercion of the result).
        if !expr.is_null() && (*expr).xpr.type_ == pg_sys::NodeTag::T_CoerceViaIO {
            expr = (*(expr as *mut pg_sys::CoerceViaIO)).arg as *mut pg_sys::FuncExpr;
        }
        if expr.is_null() || (*expr).xpr.type_ != pg_sys::NodeTag::T_FuncExpr {
            return;
        }
        let name = pg_sys::get_func_name((*expr).funcid);
        if name.is_null()
            || std::ffi::CStr::from_ptr(name).to_bytes() != b"sync_logical_slot_wait_for_change"
        {
            return;
        }
        let rtable = (*stmt).rtable;
        if !rtable.is_null() {
            for i in 0..(*rtable).length as usize {
                let rte = (*(*rtable).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry;
                if (*rte).rtekind != pg_sys::RTEKind::RTE_RESULT {
                    return;
                }
            }
        }
        pg_sys::InvalidateCatalogSnapshot();
        (*pg_sys::MyProc).xmin = pg_sys::InvalidTransactionId;
    }
}

// ---------------------------------------------------------------------------
// Files the standbys' workers read on the primary (src/primary/files.c):
// SQL-callable C functions, exported here because a Rust cdylib exports only
// Rust symbols. The forwarders hold nothing: an ERROR in the C code passes
// no Rust frame with anything to drop.

extern "C-unwind" {
    fn sls_read_snapshot(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn sls_read_slot_state(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

static FINFO_V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

#[no_mangle]
pub extern "C" fn pg_finfo_sync_logical_slot_read_snapshot() -> &'static pg_sys::Pg_finfo_record {
    &FINFO_V1
}

/// `sync_logical_slot_read_snapshot(lsn pg_lsn) RETURNS bytea`.
///
/// # Safety
/// Called by fmgr with its own call info.
#[no_mangle]
pub unsafe extern "C-unwind" fn sync_logical_slot_read_snapshot(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fmgr's call info, passed on.
    unsafe { sls_read_snapshot(fcinfo) }
}

#[no_mangle]
pub extern "C" fn pg_finfo_sync_logical_slot_read_slot_state() -> &'static pg_sys::Pg_finfo_record {
    &FINFO_V1
}

/// `sync_logical_slot_read_slot_state(slot_name name) RETURNS bytea`.
///
/// # Safety
/// Called by fmgr with its own call info.
#[no_mangle]
pub unsafe extern "C-unwind" fn sync_logical_slot_read_slot_state(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fmgr's call info, passed on.
    unsafe { sls_read_slot_state(fcinfo) }
}

/// Whether this backend's client is still there.
fn client_connected() -> bool {
    extern "C-unwind" {
        fn pq_check_connection() -> bool;
    }
    // SAFETY: a poll(2) on this backend's client socket; it reports
    // problems as COMMERROR (a log line), never an ERROR.
    unsafe { pq_check_connection() }
}

extension_sql!(
    r#"
CREATE VIEW sync_logical_slot_status AS
SELECT slot_name::name AS slot_name,
       database::name AS database,
       plugin::name AS plugin,
       state,
       ready,
       remote_restart_lsn::pg_lsn AS remote_restart_lsn,
       remote_confirmed_flush_lsn::pg_lsn AS remote_confirmed_flush_lsn,
       remote_catalog_xmin::xid AS remote_catalog_xmin,
       local_restart_lsn::pg_lsn AS local_restart_lsn,
       local_confirmed_flush_lsn::pg_lsn AS local_confirmed_flush_lsn,
       local_catalog_xmin::xid AS local_catalog_xmin,
       lag_bytes,
       last_sync_at,
       last_error,
       verdict_source,
       verified_at
  FROM @extschema@.sync_logical_slot_status_rows();

-- The documented signatures (name, pg_lsn) over the Rust functions.
CREATE FUNCTION sync_logical_slot_sync_slot(slot_name name) RETURNS text
    LANGUAGE sql VOLATILE
    AS $$ SELECT @extschema@.sync_logical_slot_sync_slot_internal(slot_name::text) $$;
CREATE FUNCTION sync_logical_slot_advance(slot_name name, upto_lsn pg_lsn) RETURNS pg_lsn
    LANGUAGE sql VOLATILE
    AS $$ SELECT format('%s/%s', to_hex(r >> 32), to_hex(r & 4294967295))::pg_lsn
            FROM @extschema@.sync_logical_slot_advance_internal(
                   slot_name::text, least(upto_lsn - '0/0', 9223372036854775807)::bigint) r $$;

CREATE FUNCTION sync_logical_slot_read_snapshot(lsn pg_lsn) RETURNS bytea
    LANGUAGE c STRICT VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'sync_logical_slot_read_snapshot';
CREATE FUNCTION sync_logical_slot_read_slot_state(slot_name name) RETURNS bytea
    LANGUAGE c STRICT VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'sync_logical_slot_read_slot_state';

REVOKE ALL ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_read_slot_state(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_status_rows() FROM PUBLIC;
REVOKE ALL ON sync_logical_slot_status FROM PUBLIC;
REVOKE ALL ON FUNCTION failover_logical_slot_init(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_sync_now() FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_drop_copies() FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_ready(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_readiness(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_sync_slot(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_sync_slot_internal(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_advance(name, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_advance_internal(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION sync_logical_slot_wait_for_change(text, text, bigint, integer) FROM PUBLIC;

-- Reading readiness and status is monitoring: pg_monitor may, and any role
-- the DBA grants the same. Changing slots stays superuser-only.
GRANT SELECT ON sync_logical_slot_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_status_rows() TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_ready(text[]) TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) TO pg_monitor;
GRANT EXECUTE ON FUNCTION sync_logical_slot_readiness(text[]) TO pg_monitor;

COMMENT ON VIEW sync_logical_slot_status IS
  'One row per primary slot this standby copies or waits to copy, as of the worker''s last pass; empty on a primary. ready: the copy can be used after a failover.';
COMMENT ON FUNCTION sync_logical_slot_status_rows() IS
  'Rows of the sync_logical_slot_status view (use the view).';
COMMENT ON FUNCTION failover_logical_slot_init(text, text, text, text, text) IS
  'On the primary: creates or updates foreign server master_fdw (postgres_fdw) and the user mapping the standbys'' workers connect with; returns the postgresql.conf lines to add on the standbys. The password is never shown.';
COMMENT ON FUNCTION sync_logical_slot_drop_copies() IS
  'On a standby, when uninstalling: drops every copy sync_logical_slot made here and returns how many. Set sync_logical_slot.slot_names to an empty string and reload first, or the worker copies them again.';
COMMENT ON FUNCTION sync_logical_slot_sync_now() IS
  'On a standby: one sync pass now, run by the worker; returns how many copies it created, advanced and dropped.';
COMMENT ON FUNCTION sync_logical_slot_ready(text[]) IS
  'On a standby: true when the slots named (NULL: every slot the filters select on the primary, less idle ones if sync_logical_slot.ready_ignores_idle_slots) have a ready copy here, as of the worker''s last pass, or, until a pass reaches the primary after a restart, as the copies'' records on disk say. A promotion gate; sync_logical_slot_readiness() tells how old the verdict is.';
COMMENT ON FUNCTION sync_logical_slot_wait_ready(interval, text[]) IS
  'On a standby: waits up to timeout for sync_logical_slot_ready(slots); returns its last value.';
COMMENT ON FUNCTION sync_logical_slot_readiness(text[]) IS
  'On a standby: sync_logical_slot_ready(slots) with its verdict''s source (pass: this worker''s passes; disk: the records kept with the copies, read at start while no pass has reached the primary), the oldest verdict''s time and age, the slots not ready, and why.';
COMMENT ON FUNCTION sync_logical_slot_sync_slot(name) IS
  'On a standby: a sync pass now; returns the state of this slot''s copy. An error if the primary lacks it or the filters exclude it.';
COMMENT ON FUNCTION sync_logical_slot_sync_slot_internal(text) IS
  'Implementation of sync_logical_slot_sync_slot(name).';
COMMENT ON FUNCTION sync_logical_slot_advance(name, pg_lsn) IS
  'On a standby: moves a persistent copy''s confirmed_flush_lsn forward to upto_lsn (never back, never past the flushed WAL); returns where it ends.';
COMMENT ON FUNCTION sync_logical_slot_advance_internal(text, bigint) IS
  'Implementation of sync_logical_slot_advance(name, pg_lsn).';
COMMENT ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn) IS
  'On the primary, called by the standbys'' workers: the decoding snapshot file the primary keeps for lsn (pg_logical/snapshots), NULL if none. Reads nothing else: grant it to the workers'' role instead of pg_read_binary_file.';
COMMENT ON FUNCTION sync_logical_slot_read_slot_state(name) IS
  'On the primary, called by the standbys'' workers: the state file of a logical replication slot (pg_replslot/<slot>/state), NULL if there is no such logical slot. Reads nothing else.';
COMMENT ON FUNCTION sync_logical_slot_wait_for_change(text, text, bigint, integer) IS
  'On the primary, called by the standbys'' workers: waits up to timeout_ms until a slot selected by slot_names moves (or the catalog_xmin of physical slot standby_slot does), then returns a fingerprint of their positions to pass as since next time. Reads shared memory only. The worker''s role needs EXECUTE (and USAGE on this schema); without it the worker polls the primary.';
"#,
    name = "sql_interface",
    requires = [
        status_rows_0_2,
        failover_logical_slot_init,
        sync_logical_slot_sync_now,
        sync_logical_slot_drop_copies,
        ready_0_2,
        wait_ready_0_2,
        sync_logical_slot_readiness,
        sync_logical_slot_sync_slot_internal,
        sync_logical_slot_advance_internal,
        sync_logical_slot_wait_for_change
    ],
);

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn init_arguments_are_checked() {
        let ok = InitArgs::check(
            Some(" db1 "),
            Some("5432"),
            Some("app"),
            Some("rep"),
            Some("pw"),
        );
        assert_eq!(
            ok.as_ref().map(|a| (a.host.as_str(), a.port)),
            Ok(("db1", 5432))
        );
        assert!(matches!(
            InitArgs::check(None, Some("5432"), Some("app"), Some("rep"), Some("pw")),
            Err((true, _))
        ));
        assert!(matches!(
            InitArgs::check(Some("h"), Some("5432"), Some("app"), Some("rep"), None),
            Err((true, _))
        ));
        for port in ["", "0", "65536", "abc", "-1", "+5432", "54 32"] {
            assert!(
                matches!(
                    InitArgs::check(Some("h"), Some(port), Some("app"), Some("rep"), Some("pw")),
                    Err((false, _))
                ),
                "{port:?}"
            );
        }
        assert!(matches!(
            InitArgs::check(
                Some(" "),
                Some("5432"),
                Some("app"),
                Some("rep"),
                Some("pw")
            ),
            Err((false, _))
        ));
        // An empty password is allowed (a passfile, or trust).
        assert!(InitArgs::check(Some("h"), Some("1"), Some("d"), Some("u"), Some("")).is_ok());
    }

    #[test]
    fn the_long_poll_looks_less_often_with_many_slots_and_when_quiet() {
        let ms = Duration::from_millis;
        assert_eq!(wait_for_change_interval(10, ms(0)), ms(1));
        assert_eq!(wait_for_change_interval(10, ms(150)), ms(5));
        assert_eq!(wait_for_change_interval(1000, ms(0)), ms(10));
        assert_eq!(wait_for_change_interval(1000, ms(150)), ms(20));
        assert_eq!(wait_for_change_interval(50_000, ms(0)), ms(10));
    }

    #[test]
    fn the_set_up_returns_every_line_a_standby_needs() {
        let lines = standby_conf_lines("it's");
        assert!(standby_conf_lines("a\\b")
            .contains(&"sync_logical_slot.database = 'a\\\\b'".to_string()));
        let setting = |name: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{name} = ")))
                .map(|l| l.split('\t').next().unwrap().to_string())
                .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
        };
        assert_eq!(
            setting("shared_preload_libraries"),
            "shared_preload_libraries = 'sync_logical_slot'"
        );
        assert_eq!(setting("wal_level"), "wal_level = logical");
        assert_eq!(setting("hot_standby_feedback"), "hot_standby_feedback = on");
        assert_eq!(
            setting("sync_logical_slot.database"),
            "sync_logical_slot.database = 'it''s'"
        );
        assert_eq!(
            setting("sync_logical_slot.master_fdw"),
            "sync_logical_slot.master_fdw = 'master_fdw'"
        );
        assert_eq!(
            setting("sync_logical_slot.standby_slot_names"),
            "sync_logical_slot.standby_slot_names = ''"
        );
        // The physical slot's name is the DBA's: a reminder, commented out.
        assert!(lines.iter().any(|l| l.starts_with("#primary_slot_name = ")));
        // Every line is a setting or a comment, with a tab before any
        // trailing comment: appended as they are, postgresql.conf parses.
        for l in &lines {
            let value = l.split('\t').next().unwrap();
            assert!(value.starts_with('#') || value.contains(" = "), "{l}");
            assert!(!value.contains(" #"), "{l}");
        }
    }

    #[test]
    fn literals_are_quoted_as_postgres_does() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn option_lists_set_what_exists_and_add_the_rest() {
        let present = vec!["host=a".to_string(), "password=x".to_string()];
        assert_eq!(
            option_list(&present, &[("host", "b"), ("port", "1")], &["password"]),
            "SET host 'b', ADD port '1', DROP password"
        );
    }
}
