//! The background worker: registration and the main loop.
//!
//! The loop is as short as core's: handle interrupts and reload, do one step,
//! sleep on the latch. A step depends on what the server is:
//! - a primary (or a promoted standby): nothing to sync; it only marks its
//!   logical slots as this primary's own (see sync.rs), once a second at most;
//! - a standby without `hot_standby_feedback` or `primary_slot_name`: say which
//!   setting is missing in one LOG line, and wait for a reload;
//! - a standby: connect to the primary (with backoff when it cannot), run one
//!   sync pass (`sync.rs`), and sleep: briefly after a pass that changed
//!   something, at most `sync_logical_slot.naptime` otherwise.
//!
//! When the server is promoted, the worker drops the copies that never became
//! persistent (temporary slots it owns), empties the status table, and stops
//! syncing; the persistent copies stay as ordinary logical slots.
//!
//! SIGTERM uses PostgreSQL's own `die` handler, so that it also interrupts a
//! connection attempt or query inside libpqwalreceiver; SIGHUP sets
//! `ConfigReloadPending`, handled at the top of the loop, and interrupts a
//! network wait (see `signals`).

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::conninfo::{worker_conninfo, ConnSource};
use crate::error::SyncError;
use crate::guc;
use crate::readiness;
use crate::remote::{source_conninfo, Primary};
use crate::report::{debug1, log};
use crate::signals;
use crate::slot;
use crate::status;
use crate::sync::Syncer;

/// `pg_stat_activity.backend_type` of the worker.
pub const WORKER_TYPE: &str = "sync_logical_slot worker";
/// How long the postmaster waits before restarting the worker after it exits with an error.
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Reconnection backoff: first delay, doubled at each failure up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

pub fn register() {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("sync_logical_slot")
        .set_function("sync_logical_slot_worker_main")
        .enable_spi_access()
        // enable_spi_access() resets the start time: set it afterwards, so the
        // worker also runs on a hot standby.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn sync_logical_slot_worker_main(_arg: pg_sys::Datum) {
    // SAFETY: installing PostgreSQL's own handlers in a background worker, before
    // unblocking signals, is what core's workers do.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(signals::handle_sighup));
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(signals::die));
        pg_sys::pqsignal(pg_sys::SIGUSR2 as i32, Some(signals::handle_request));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let database = guc::database();
    if status::connecting_to_database(true) {
        // The previous start ended while connecting to the database.
        wait_for_database(&database);
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    if !slot::watch_slot_conflicts() {
        debug1(
            "sync_logical_slot worker cannot watch for recovery conflicts on its slots",
            "This server's procsignal slot layout is not the expected one; a conflict is then seen only when it cancels one of the worker's statements.",
        );
    }
    status::connecting_to_database(false);
    status::set_worker_error(None);
    check_extension_version(&database);
    Worker::default().run()
}

/// Earlier versions of the extension whose SQL functions this library still
/// serves (api.rs keeps their C symbols).
const SERVED_PREVIOUS_VERSIONS: &[&str] = &["0.1.0"];

/// The extension's objects in the worker's database may be of an older
/// version than this library (a rolling upgrade: the new library on the
/// standbys first, the primary later): they keep working (api.rs serves the
/// previous version's functions too), and the log says what to run.
fn check_extension_version(database: &str) {
    // Read-only SPI: on a standby nothing may take a transaction id.
    let installed = in_transaction(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'sync_logical_slot'",
                    Some(1),
                    &[],
                )?
                .first()
                .get_one::<String>()
        })
        .map_err(|e| SyncError::Internal(e.to_string()))
    });
    let installed = match installed {
        Ok(v) => v,
        Err(e) => {
            debug1(
                "sync_logical_slot could not read the extension's version",
                &e.to_string(),
            );
            None
        }
    };
    let library = env!("CARGO_PKG_VERSION");
    let Some(v) = installed.filter(|v| v != library) else {
        return;
    };
    let message = format!(
        "the sync_logical_slot extension in database \"{database}\" is version {v}, the library {library}"
    );
    if SERVED_PREVIOUS_VERSIONS.contains(&v.as_str()) {
        log(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            &message,
            Some(format!(
                "The library serves version {v}'s SQL functions until the extension is updated; version {library}'s additions are missing meanwhile."
            )),
            Some("Run ALTER EXTENSION sync_logical_slot UPDATE on the primary, in every database that has the extension, once every server runs the new library: it reaches the standbys through replication."),
        );
    } else {
        crate::report::warning(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            &message,
            Some(format!(
                "This library serves version {library}'s SQL functions and those of {}; functions of version {v} may fail.",
                SERVED_PREVIOUS_VERSIONS.join(", ")
            )),
            Some("Install the library of the extension's version, or update the extension to this library's version (ALTER EXTENSION sync_logical_slot UPDATE TO '<version>')."),
        );
    }
}

/// Whether pg_database has `name`. Connected to no database, only a heap
/// scan of the shared catalog works (an index would need pg_class), as the
/// autovacuum launcher reads the database list.
fn database_exists(name: &CStr) -> bool {
    // SAFETY: in a transaction; the shared catalog is opened, scanned and
    // closed here, each tuple's struct read while the scan holds it.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        let mut found = false;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if CStr::from_ptr((*form).datname.data.as_ptr()) == name {
                found = true;
                break;
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        found
    }
}

/// How often a worker without its database looks for it again.
const DATABASE_RECHECK: Duration = Duration::from_secs(10);

/// `sync_logical_slot.database` does not exist (the last start ended while
/// connecting to it): rather than fail again every few seconds, connect to
/// no database, say once why, show it in the status view, and look again
/// every 10 s. A database created on the primary reaches a standby by
/// replication: once it exists, exit to be started again (in 5 s) and
/// connect. The setting itself needs a restart to change.
fn wait_for_database(database: &str) -> ! {
    BackgroundWorker::connect_worker_to_spi(None, None);
    let name = CString::new(database).unwrap_or_default();
    let mut said = false;
    loop {
        let exists = BackgroundWorker::transaction(|| database_exists(&name));
        if exists {
            status::connecting_to_database(false);
            status::set_worker_error(None);
            log(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                &format!("database \"{database}\" exists now: the sync_logical_slot worker restarts to connect to it"),
                None,
                None,
            );
            // SAFETY: ends this process; the postmaster starts the worker again.
            unsafe { pg_sys::proc_exit(1) };
        }
        if !said {
            let why = format!("database \"{database}\" (sync_logical_slot.database) does not exist on this server");
            log(
                PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
                &format!("{why}: the sync_logical_slot worker waits for it"),
                Some(format!("It looks for the database again every {} s; nothing is synced meanwhile.", DATABASE_RECHECK.as_secs())),
                Some("Create the database on the primary (it reaches the standbys by replication), or set sync_logical_slot.database to a database that exists and restart the server."),
            );
            status::set_worker_error(Some(&why));
            report_activity(&format!("waiting for database \"{database}\" to exist"));
            said = true;
        }
        // SAFETY: this process's latch; SIGTERM (PostgreSQL's die) is handled
        // by the interrupt check right after.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                DATABASE_RECHECK.as_millis() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

/// For src/connect.c: a connection attempt in progress is given up (closed,
/// not raised through) when a reload comes, so that new settings apply at
/// once. A flag read: nothing here can raise.
#[no_mangle]
pub extern "C" fn sls_connect_abandoned() -> bool {
    signals::reload_pending()
}

/// What the worker last told the log about the server, so each state is said once.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    NotStandby,
    MissingPrerequisites(Vec<String>),
    Standby,
}

#[derive(Default)]
struct Worker {
    mode: Option<Mode>,
    primary: Option<Primary>,
    /// The settings the connection was made from; a reload that changes them reconnects.
    conn_settings: Vec<String>,
    failures: u32,
    retry_at: Option<Instant>,
    syncer: Syncer,
    /// The current sleep between passes (see next_nap).
    nap: Duration,
    /// The long poll: the fingerprint of the primary's slots it last returned
    /// (0: none yet on this connection).
    remote_fingerprint: i64,
    /// The last pass settled (every selected copy ready and where its primary
    /// slot stands, nothing left to do): the fingerprint of the standby's own
    /// slots it left, to tell whether they changed since.
    settled: Option<u64>,
    /// The long poll returned with nothing moved: the next step may skip its pass.
    nothing_moved: bool,
    last_pass: Option<Instant>,
    /// The connection was closed on purpose (to end a long poll): making it
    /// anew is not news for the log.
    quiet_reconnect: bool,
    /// Long polls that failed in a row (not cut short on purpose).
    wait_failures: u32,
    /// When a missing long poll was last looked for again.
    long_poll_checked: Option<Instant>,
    /// What the log last said about the long poll (None: nothing yet).
    long_poll_said: Option<Result<(), String>>,
    /// The verdicts kept on disk were shown (once, before the first pass).
    disk_verdicts_shown: bool,
    /// Attempts in a row that failed while the primary answered (see cannot_renew).
    renew_failures: u32,
}

impl Worker {
    fn run(&mut self) -> ! {
        self.conn_settings = connection_settings();
        // SAFETY: MyLatch is this process's latch in shared memory (PGPROC).
        status::set_worker(Some(unsafe { (pg_sys::MyLatch, pg_sys::MyProcPid) }));
        // SAFETY: registers a callback run at this process's exit (also after FATAL).
        unsafe { pg_sys::before_shmem_exit(Some(forget_worker), pg_sys::Datum::from(0)) };
        loop {
            if slot::slot_conflict_pending() && slot::release_for_recovery() > 0 {
                log(
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    "sync_logical_slot dropped its temporary copies: replay on this standby must invalidate one of them",
                    Some("A recovery conflict: the standby removes catalog rows that a copy still reserved. The copies that were not persistent yet are made again at the next pass.".into()),
                    None,
                );
            }
            // Between steps no statement runs: a cancel (core raises one for
            // a recovery conflict, even outside a transaction) has nothing to
            // cancel here and must not end the worker; a termination still does.
            let _ = in_transaction_without_snapshot(|| {
                pgrx::check_for_interrupts!();
                Ok(())
            });
            if signals::reload_pending() {
                // SAFETY: resetting the flag the SIGHUP handler sets, then reloading as core does.
                unsafe {
                    pg_sys::ConfigReloadPending = 0;
                    pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
                }
                self.reload();
            }
            // Requests made until now are answered by this step.
            let upto = status::requested();
            let timeout = self.step(upto);
            // A conflict seen during the step (its latch already consumed)
            // is answered at once, at the top of the loop.
            if !status::request_pending() && !slot::slot_conflict_pending() {
                self.sleep(timeout);
            }
        }
    }

    fn reload(&mut self) {
        // New settings (drop_extra_slots, ...) may change what a pass does
        // although no slot moved: the next step runs one.
        self.settled = None;
        let now = connection_settings();
        if now != self.conn_settings {
            self.conn_settings = now;
            // New settings: use them at once, and say what happens with them.
            self.disconnect();
            self.failures = 0;
            self.retry_at = None;
        }
    }

    /// One step; returns how long to sleep (None: until signalled). Answers
    /// the SQL requests up to `upto` (sync_now): with the pass's counts, or
    /// with why no pass ran.
    fn step(&mut self, upto: u64) -> Option<Duration> {
        // SAFETY: plain reads of shared state.
        if !unsafe { pg_sys::RecoveryInProgress() } {
            if self.mode.is_some() && self.mode != Some(Mode::NotStandby) {
                // Promoted: copies that never became persistent were never
                // safe to use; the persistent ones are now ordinary slots.
                slot::drop_own_temporary_slots();
                status::clear();
            }
            if self.mode != Some(Mode::NotStandby) {
                // No verdict of a standby's life may outlive it (should this
                // server become a standby again).
                self.syncer.forget_verdicts();
            }
            self.enter(Mode::NotStandby);
            self.disconnect();
            status::answer(upto, Err(SyncError::NotInRecovery.to_string()));
            // Remember which slots belong to this primary's history, so that
            // after a switchover they are replaced, not trusted (see sync.rs).
            slot::mark_primary_slots();
            return Some(guc::naptime().max(Duration::from_secs(1)));
        }
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            status::answer(
                upto,
                Err(format!(
                    "sync_logical_slot cannot sync slots: {} on this standby",
                    missing.join(" and ")
                )),
            );
            self.enter(Mode::MissingPrerequisites(missing));
            self.disconnect();
            // A reload wakes us; the timeout notices a promotion meanwhile.
            return Some(guc::naptime());
        }
        self.enter(Mode::Standby);
        if !std::mem::replace(&mut self.disk_verdicts_shown, true) && status::passes() == 0 {
            // Until a pass reaches the primary, the copies' readiness is what
            // their records on disk say (the primary may be down).
            if let Ok(Some(rows)) =
                in_transaction(|| Ok(readiness::load(&guc::slot_filter().unwrap_or_default())))
            {
                status::publish_from_disk(&rows);
            }
        }

        if self.primary.is_none() {
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                // A session asking for a pass does not wait for the backoff.
                if now < at && !status::request_pending() {
                    return Some(at - now);
                }
            }
            let source = ConnSource::choose(&guc::primary_conninfo(), &guc::master_fdw());
            report_activity("connecting to the primary server");
            // The network waits inside are interruptible by a reload (remote.rs).
            match in_transaction(|| connect(&source)) {
                Ok(p) => {
                    self.primary = Some(p);
                    let message = "sync_logical_slot worker connected to the primary server";
                    let detail = format!("Connection settings come from {}.", source.describe());
                    if std::mem::take(&mut self.quiet_reconnect) {
                        debug1(message, &detail);
                    } else {
                        log(
                            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                            message,
                            Some(detail),
                            None,
                        );
                    }
                }
                // Interrupted by a reload: use the new settings now, no backoff.
                Err(_) if signals::reload_pending() => {
                    signals::take_cancel_raised();
                    return Some(Duration::ZERO);
                }
                // Cancelled for a recovery conflict: the loop releases the
                // copies at once, then connects again, no backoff.
                Err(_) if slot::slot_conflict_pending() => return Some(Duration::ZERO),
                Err(e) => {
                    // A failure is news, and so is the connection after it.
                    self.quiet_reconnect = false;
                    status::answer(upto, Err(e.to_string()));
                    match &e {
                        SyncError::WrongPrimary(_) => self.cannot_renew(&e, true),
                        SyncError::Connect(why) if refused_by_a_running_server(why) => {
                            self.cannot_renew(&e, false)
                        }
                        _ => {}
                    }
                    return Some(self.failed(e, &source));
                }
            }
        }

        // The long poll saw nothing move on the primary, nothing moved here,
        // every copy was ready and nobody asks for a pass: this pass would
        // find what the last one found.
        if std::mem::take(&mut self.nothing_moved)
            && !status::request_pending()
            && self.settled == Some(slot::logical_slots_fingerprint())
        {
            self.syncer.still_synced();
            return Some(guc::naptime());
        }

        let primary = self.primary.as_mut().expect("connected above");
        let syncer = &mut self.syncer;
        let started = Instant::now();
        self.last_pass = Some(started);
        // Taken before the pass reads the standby's slots: a change made
        // meanwhile by someone else shows as a difference after it.
        let local_before = slot::logical_slots_fingerprint();
        self.settled = None;
        match in_transaction(|| syncer.pass(primary)) {
            Ok(counts) => {
                // A cancel that came as a query finished cancelled nothing.
                signals::take_cancel_raised();
                self.failures = 0;
                self.retry_at = None;
                self.renew_failures = 0;
                status::answer(upto, Ok((counts.created, counts.advanced, counts.dropped)));
                report_activity(&format!(
                    "{} slot(s) selected for sync, {} ready; last pass {:.1} ms",
                    counts.selected,
                    counts.ready,
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                // Nothing left for a later pass to do unless a slot moves: every
                // copy ready and current, and this pass found the standby's
                // slots as they are now (it changed none, nor did anyone else).
                let settled = counts.ready == counts.selected
                    && counts.current == counts.selected
                    && !counts.changed()
                    && slot::logical_slots_fingerprint() == local_before;
                self.settled = settled.then_some(local_before);
                self.nap = next_nap(self.nap, counts.changed(), guc::naptime());
                // With the long poll, a settled standby waits for the primary's
                // slots to move, up to naptime; otherwise the back-off decides.
                let long_poll = self.primary.as_ref().is_some_and(|p| p.long_poll.is_ok());
                Some(if long_poll && settled {
                    guc::naptime()
                } else {
                    self.nap
                })
            }
            // A reload: apply it now. Reconnect only if it cancelled a query
            // (the connection may be mid-answer) or changed the settings.
            Err(_) if signals::reload_pending() => {
                if signals::take_cancel_raised() {
                    self.disconnect();
                }
                Some(Duration::ZERO)
            }
            // The startup process waits for a slot this worker holds: the
            // next step releases it at once (the pass may have been cut
            // short in a query to the primary: that connection is made anew).
            Err(_) if slot::slot_conflict_pending() => {
                self.disconnect();
                Some(Duration::ZERO)
            }
            // Promoted during the pass: the next step says so and stops.
            Err(SyncError::NotInRecovery) => {
                self.disconnect();
                Some(Duration::ZERO)
            }
            Err(e) => {
                status::answer(upto, Err(e.to_string()));
                // The primary still answers: it is up, and the worker cannot
                // renew the verdicts. Ready would be stale: withdrawn until a
                // pass succeeds. (A primary that stopped answering leaves
                // them: ready then means "current when the primary went".)
                let primary = self.primary.as_mut().expect("connected above");
                if in_transaction(|| primary.query("SELECT 1", 1)).is_ok() {
                    self.cannot_renew(&e, false);
                }
                self.disconnect();
                let source = ConnSource::choose(&guc::primary_conninfo(), &guc::master_fdw());
                Some(self.failed(e, &source))
            }
        }
    }

    /// The primary answers, but the worker cannot renew the copies' verdicts
    /// (a pass fails, the server refuses the connection, it is not this
    /// standby's primary). Ready would go stale: withdrawn, records first,
    /// at once for a wrong primary, else at the second attempt in a row (on
    /// a fresh connection after the back-off), so that one timeout on a busy
    /// primary does not block a failover that follows.
    fn cannot_renew(&mut self, e: &SyncError, at_once: bool) {
        self.renew_failures += 1;
        if at_once || self.renew_failures >= 2 {
            self.syncer.forget_verdicts();
            status::withdraw(&format!(
                "not kept current: the primary server is up but the worker cannot sync: {e}"
            ));
        }
    }

    fn failed(&mut self, e: SyncError, source: &ConnSource) -> Duration {
        self.failures += 1;
        let delay = backoff(self.failures);
        self.retry_at = Some(Instant::now() + delay);
        report_activity("waiting to reconnect to the primary server");
        log(
            e.sqlstate(),
            &e.to_string(),
            Some(format!(
                "Connection settings come from {}. Attempt {} failed; the next one is in {} s.",
                source.describe(),
                self.failures,
                delay.as_secs()
            )),
            e.hint(),
        );
        delay
    }

    fn disconnect(&mut self) {
        self.primary = None;
        self.remote_fingerprint = 0;
        self.nothing_moved = false;
    }

    /// Between steps: on the primary's long poll when it has one (returns as
    /// soon as a selected slot moves), else on the latch. Either way a reload,
    /// a request for a pass or SIGTERM ends the wait.
    fn sleep(&mut self, timeout: Option<Duration>) {
        let function = match (&self.mode, &self.primary, timeout) {
            (Some(Mode::Standby), Some(p), Some(t)) if !t.is_zero() => p.long_poll.clone(),
            _ => return wait_latch(timeout),
        };
        self.say_long_poll(function.as_ref().map(|_| ()).map_err(Clone::clone));
        let Ok(function) = function else {
            // The DBA may create the extension or grant EXECUTE at any time:
            // look again now and then.
            let due = self
                .long_poll_checked
                .is_none_or(|at| at.elapsed() >= LONG_POLL_RECHECK);
            if due {
                self.long_poll_checked = Some(Instant::now());
                let primary = self.primary.as_mut().expect("matched above");
                if let Ok(found) = in_transaction(|| primary.find_long_poll()) {
                    primary.long_poll = found;
                    if primary.long_poll.is_ok() {
                        return;
                    }
                }
            }
            return wait_latch(timeout);
        };
        let timeout = timeout.unwrap_or_default().min(LONG_POLL_MAX);
        let since = self.remote_fingerprint;
        let physical = guc::server_setting(c"primary_slot_name");
        // In the syntax any version of the primary's library reads.
        let slot_names = guc::slot_filter().unwrap_or_default().canonical();
        let primary = self.primary.as_mut().expect("matched above");
        // No snapshot: the wait may last seconds, and a snapshot held here
        // would hold back the primary's vacuum through hot_standby_feedback.
        let waited = signals::in_long_poll(
            || status::request_pending() || slot::slot_conflict_pending(),
            || {
                in_transaction_without_snapshot(|| {
                    primary.wait_for_change(&function, &slot_names, &physical, since, timeout)
                })
            },
        );
        let Some(waited) = waited else {
            // A request or reload came first: the next step serves it.
            return;
        };
        match waited {
            Ok(now) => {
                signals::take_cancel_raised();
                self.wait_failures = 0;
                self.remote_fingerprint = now;
                self.nothing_moved = now == since;
                if !self.nothing_moved {
                    // Slots that move tend to go on moving: one pass per
                    // NAP_AFTER_CHANGE at most, as with polling.
                    let next = self.last_pass.map(|at| at + NAP_AFTER_CHANGE);
                    if let Some(wait) = next.and_then(|n| n.checked_duration_since(Instant::now()))
                    {
                        wait_latch(Some(wait));
                    }
                }
            }
            // Cut short by a reload or a request, or cancelled for a
            // recovery conflict: the connection may be mid-answer, so it is
            // made anew (the next step does, quietly).
            Err(_) if signals::take_cancel_raised() || slot::slot_conflict_pending() => {
                self.disconnect();
                self.quiet_reconnect = true;
            }
            // Most often the connection broke (the primary stopped or
            // failed): make it anew; the next step says what happened.
            Err(_) if self.wait_failures == 0 => {
                self.wait_failures += 1;
                self.disconnect();
            }
            Err(e) => {
                // Failing again on a fresh connection: poll on this connection
                // (the function is looked for again in LONG_POLL_RECHECK).
                self.wait_failures = 0;
                log(
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    &format!("sync_logical_slot worker's wait on the primary failed: {e}"),
                    Some("The worker polls the primary until the wait works again.".into()),
                    None,
                );
                self.long_poll_checked = Some(Instant::now());
                if let Some(p) = self.primary.as_mut() {
                    p.long_poll = Err(e.to_string());
                }
                self.long_poll_said = Some(Err(e.to_string()));
            }
        }
    }

    /// Logs whether the long poll is used, when that changes.
    fn say_long_poll(&mut self, now: Result<(), String>) {
        if self.long_poll_said.as_ref() == Some(&now) {
            return;
        }
        match &now {
            Ok(()) => log(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                "sync_logical_slot worker waits on the primary for its slots to move",
                Some("It calls sync_logical_slot_wait_for_change() on the primary, which returns as soon as a selected slot moves.".into()),
                None,
            ),
            Err(why) => log(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                &format!(
                    "sync_logical_slot worker polls the primary every {} ms at most: {why}",
                    guc::naptime().as_millis()
                ),
                Some("Without the long poll a slot that moves after a quiet time is copied up to sync_logical_slot.naptime later.".into()),
                Some("On the primary: shared_preload_libraries must include sync_logical_slot; in the database the worker connects to, CREATE EXTENSION sync_logical_slot; and GRANT EXECUTE ON FUNCTION sync_logical_slot_wait_for_change(text, text, bigint, integer) TO the worker's role (with USAGE on its schema)."),
            ),
        }
        self.long_poll_said = Some(now);
    }

    /// Logs a change of mode, once.
    fn enter(&mut self, mode: Mode) {
        if self.mode.as_ref() == Some(&mode) {
            return;
        }
        match &mode {
            Mode::NotStandby => {
                report_activity("idle: this server is not a standby");
                let message = if matches!(
                    self.mode,
                    Some(Mode::Standby) | Some(Mode::MissingPrerequisites(_))
                ) {
                    "server is no longer in recovery: sync_logical_slot stops syncing slots"
                } else {
                    "sync_logical_slot worker is idle: this server is not a standby"
                };
                log(
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    message,
                    None,
                    None,
                );
            }
            Mode::MissingPrerequisites(missing) => {
                report_activity("waiting: prerequisites missing");
                let what = missing.join(" and ");
                // The copies are no longer kept current: not ready (off the
                // disk first, then off the view).
                self.syncer.forget_verdicts();
                status::withdraw(&format!(
                    "not kept current: {what} on this standby, so the worker stopped syncing"
                ));
                let bad_filter = missing
                    .iter()
                    .any(|m| m.starts_with("sync_logical_slot.slot_names"));
                let server = missing.len() > usize::from(bad_filter);
                log(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    &format!("sync_logical_slot cannot sync slots: {what} on this standby"),
                    Some(if server {
                        "Without hot_standby_feedback and a physical slot (primary_slot_name) the primary may remove catalog rows that the copies of its logical slots still need; without wal_level = logical a server holding logical slots does not start.".into()
                    } else {
                        "A malformed slot list at server start selects no slot, rather than every slot: no copy is kept current until it is corrected.".into()
                    }),
                    Some(format!(
                        "{}{}",
                        if missing.iter().any(|m| m.starts_with("wal_level")) {
                            "Set hot_standby_feedback = on, primary_slot_name and wal_level = logical in postgresql.conf, then restart the standby (wal_level needs a restart)."
                        } else if server {
                            "Set hot_standby_feedback = on and primary_slot_name in postgresql.conf, then reload (SELECT pg_reload_conf())."
                        } else {
                            ""
                        },
                        if bad_filter {
                            " Correct sync_logical_slot.slot_names in postgresql.conf (a comma list of slot names, name:NAME, name_like:PATTERN and plugin:NAME), then reload (SELECT pg_reload_conf())."
                        } else {
                            ""
                        }
                    ).trim_start()),
                );
            }
            Mode::Standby => {
                if matches!(self.mode, Some(Mode::MissingPrerequisites(_))) {
                    log(
                        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                        "sync_logical_slot prerequisites are met: slot sync starts",
                        None,
                        None,
                    );
                }
            }
        }
        self.mode = Some(mode);
    }
}

/// At exit: sessions must no longer signal this pid (it may be reused).
#[pg_guard]
unsafe extern "C-unwind" fn forget_worker(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    status::set_worker(None);
}

/// Whether a failed connection was refused by a running server (libpq shows
/// the server's FATAL: authentication, pg_hba.conf, a role that may not log
/// in, too many connections), as opposed to no answer at all. A server that
/// is starting, stopping or in recovery ("the database system is ...", 57P03)
/// is on its way out or not a primary yet: a switchover in progress, not a
/// reason to withdraw readiness.
fn refused_by_a_running_server(message: &str) -> bool {
    message.contains("FATAL:") && !message.contains("the database system is")
}

/// What the connection is made from; compared across reloads.
fn connection_settings() -> Vec<String> {
    vec![
        guc::primary_conninfo(),
        guc::master_fdw(),
        guc::server_setting(c"primary_conninfo"),
        guc::database(),
    ]
}

/// Which of the standby prerequisites (docs/design.md, "The two halves") are missing.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if guc::server_setting(c"hot_standby_feedback") != "on" {
        missing.push("hot_standby_feedback is off".to_string());
    }
    if guc::server_setting(c"primary_slot_name").trim().is_empty() {
        missing.push("primary_slot_name is not set".to_string());
    }
    // A logical slot on disk stops a server with a lower wal_level from starting.
    if guc::server_setting(c"wal_level") != "logical" {
        missing.push("wal_level is not logical".to_string());
    }
    // A typo let in at server start selects nothing, rather than everything.
    if let Err(why) = guc::slot_filter() {
        missing.push(format!(
            "sync_logical_slot.slot_names = '{}' is invalid ({why})",
            guc::slot_names()
        ));
    }
    missing
}

fn connect(source: &ConnSource) -> Result<Primary, SyncError> {
    let base = source_conninfo(source)?;
    Primary::connect(&worker_conninfo(base, source, &guc::database()))
}

/// The first sleep after a pass that changed something; also the shortest
/// time between two passes when the long poll wakes the worker.
const NAP_AFTER_CHANGE: Duration = Duration::from_millis(10);
/// How often the worker looks again for a long poll it could not use.
const LONG_POLL_RECHECK: Duration = Duration::from_secs(30);
/// The longest one long poll waits: well within the connection's
/// statement_timeout (conninfo.rs), whatever naptime is.
const LONG_POLL_MAX: Duration =
    Duration::from_millis(crate::conninfo::STATEMENT_TIMEOUT_MS as u64 / 2);

/// Short after a change (slots that move tend to move on), doubling while
/// nothing changes, up to `naptime`: a busy slot is followed within
/// milliseconds, an idle primary gets one query per `naptime`.
pub fn next_nap(current: Duration, changed: bool, naptime: Duration) -> Duration {
    if changed {
        NAP_AFTER_CHANGE.min(naptime)
    } else {
        (current * 2).clamp(NAP_AFTER_CHANGE.min(naptime), naptime)
    }
}

pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << shift)).min(BACKOFF_CAP)
}

/// Runs `f` in its own transaction (with a snapshot, for catalog reads and SPI).
/// An ERROR raised inside is caught, the transaction aborted, and the error
/// returned as a value: one failed step never kills the worker.
fn in_transaction<T>(f: impl FnOnce() -> Result<T, SyncError>) -> Result<T, SyncError> {
    transaction(true, f)
}

/// As `in_transaction`, without a snapshot (catalog lookups still work:
/// they take their own, briefly).
fn in_transaction_without_snapshot<T>(
    f: impl FnOnce() -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    transaction(false, f)
}

fn transaction<T>(
    snapshot: bool,
    f: impl FnOnce() -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the worker is connected to a database and not inside a transaction.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            if snapshot {
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
        }
        let r = f();
        // SAFETY: matches the calls above.
        unsafe {
            if snapshot {
                pg_sys::PopActiveSnapshot();
            }
            pg_sys::CommitTransactionCommand();
        }
        r
    }));
    match result {
        Ok(r) => r,
        Err(payload) => {
            slot::release_if_held();
            // SAFETY: aborting whatever transaction state the error left behind;
            // a no-op when none is open.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(SyncError::from_panic(payload))
        }
    }
}

fn wait_latch(timeout: Option<Duration>) {
    let (events, ms) = match timeout {
        Some(d) => (
            pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH,
            d.as_millis().clamp(1, i32::MAX as u128) as std::ffi::c_long,
        ),
        None => (pg_sys::WL_LATCH_SET | pg_sys::WL_EXIT_ON_PM_DEATH, -1),
    };
    // SAFETY: MyLatch is this process's latch; WL_EXIT_ON_PM_DEATH exits if the postmaster dies.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            events as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Shows the worker's state in `pg_stat_activity.query`.
fn report_activity(what: &str) {
    let text = CString::new(what).unwrap_or_default();
    // SAFETY: pgstat copies the string.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naps_are_short_after_a_change_and_back_off_to_naptime() {
        let naptime = Duration::from_secs(1);
        let mut nap = next_nap(naptime, true, naptime);
        assert_eq!(nap, Duration::from_millis(10));
        let mut seen = vec![nap];
        for _ in 0..10 {
            nap = next_nap(nap, false, naptime);
            seen.push(nap);
        }
        assert_eq!(seen[1], Duration::from_millis(20));
        assert_eq!(*seen.last().unwrap(), naptime);
        // A naptime below 10 ms is kept.
        let tiny = Duration::from_millis(5);
        assert_eq!(next_nap(tiny, true, tiny), tiny);
        assert_eq!(next_nap(tiny, false, tiny), tiny);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(1000), Duration::from_secs(30));
    }
}
