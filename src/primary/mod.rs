//! On the primary: no change reaches a logical consumer before the standbys
//! have it (DESIGN.md invariant 7; `sync_logical_slot.standby_slot_names`,
//! `sync_logical_slot.standby_slots_min_confirmed`).
//!
//! Why: a consumer that confirms a transaction the standby never received
//! holds, after a failover, data the new primary does not have.
//!
//! How, on PostgreSQL 13-16 (17 has `synchronized_standby_slots`):
//! - walsenders: a `ClientAuthentication_hook` wraps `PqCommMethods` for
//!   database walsenders. Before each CopyData `'w'` (XLogData) message of a
//!   logical slot, the walsender waits until the named standbys' physical
//!   slots have flushed that message's LSN. A transaction's COMMIT message
//!   carries its commit record's end, so no commit is sent before the
//!   standbys flushed it. While waiting it honours interrupts and reloads
//!   (a slot taken out of the setting releases it at once), sends keepalives,
//!   and notices a client that went away (POLLRDHUP), so the slot is freed
//!   for the consumer's next connection. Only while a logical slot streams:
//!   the same connection's SQL and COPY (a table sync) pass untouched.
//! - SQL decoding functions (`pg_logical_slot_get_changes` and the peek and
//!   binary forms): built-in functions bypass `fmgr_hook`, so an
//!   `ExecutorRun_hook` finds them in the plan (statement text first, then
//!   the plan's FuncExpr OIDs) and waits, before the query runs, until the
//!   standbys flushed all WAL there is, again for WAL flushed during that
//!   wait, until a wait ends with nothing new: a cancelled wait consumes
//!   nothing. Under a steady load the last round's WAL (milliseconds of it)
//!   may remain uncovered, and a call through a view whose text does not
//!   name the function is not seen.
//! - A named slot that does not exist, is not physical or is invalidated
//!   confirms nothing: a WARNING names it (at most every 10 s) and the wait
//!   goes on. A walsender whose own slot is named does not wait for itself.
//!   On a standby nothing waits; after promotion the setting applies.
//!
//! Waiting polls the physical slots' positions (a standby reports its flush
//! right after it flushes) with a short, growing timeout on the latch.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::guc;
use crate::slot;
use crate::types::Lsn;

/// PostgreSQL's `PQcommMethods` (libpq/libpq.h), absent from the bindings.
#[repr(C)]
struct PqCommMethods {
    comm_reset: Option<unsafe extern "C-unwind" fn()>,
    flush: Option<unsafe extern "C-unwind" fn() -> c_int>,
    flush_if_writable: Option<unsafe extern "C-unwind" fn() -> c_int>,
    is_send_pending: Option<unsafe extern "C-unwind" fn() -> bool>,
    putmessage: Option<unsafe extern "C-unwind" fn(c_char, *const c_char, usize) -> c_int>,
    putmessage_noblock: Option<unsafe extern "C-unwind" fn(c_char, *const c_char, usize)>,
    #[cfg(feature = "pg13")]
    startcopyout: Option<unsafe extern "C-unwind" fn()>,
    #[cfg(feature = "pg13")]
    endcopyout: Option<unsafe extern "C-unwind" fn(bool)>,
}

type ClientAuthenticationHook = Option<unsafe extern "C-unwind" fn(*mut pg_sys::Port, c_int)>;

extern "C-unwind" {
    #[link_name = "PqCommMethods"]
    static mut PQ_COMM_METHODS: *const PqCommMethods;
    #[link_name = "ClientAuthentication_hook"]
    static mut CLIENT_AUTHENTICATION_HOOK: ClientAuthenticationHook;
}

static mut PREV_CLIENT_AUTH: ClientAuthenticationHook = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
/// This walsender's original methods, and ours around them.
static mut ORIGINAL: *const PqCommMethods = std::ptr::null();
static mut WRAPPED: PqCommMethods = PqCommMethods {
    comm_reset: None,
    flush: None,
    flush_if_writable: None,
    is_send_pending: None,
    putmessage: None,
    putmessage_noblock: None,
    #[cfg(feature = "pg13")]
    startcopyout: None,
    #[cfg(feature = "pg13")]
    endcopyout: None,
};

/// Installs the hooks (from _PG_init, in the postmaster).
pub fn init() {
    // SAFETY: hooks are installed once, before any backend starts.
    unsafe {
        PREV_CLIENT_AUTH = CLIENT_AUTHENTICATION_HOOK;
        CLIENT_AUTHENTICATION_HOOK = Some(client_authentication);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn client_authentication(port: *mut pg_sys::Port, status: c_int) {
    // SAFETY: chained hook and process-local globals of this new backend.
    unsafe {
        if let Some(prev) = PREV_CLIENT_AUTH {
            prev(port, status);
        }
        if status == pg_sys::STATUS_OK as c_int && pg_sys::am_db_walsender && ORIGINAL.is_null() {
            ORIGINAL = PQ_COMM_METHODS;
            let o = &*ORIGINAL;
            WRAPPED = PqCommMethods {
                comm_reset: o.comm_reset,
                flush: o.flush,
                flush_if_writable: o.flush_if_writable,
                is_send_pending: o.is_send_pending,
                putmessage: Some(putmessage),
                putmessage_noblock: Some(putmessage_noblock),
                #[cfg(feature = "pg13")]
                startcopyout: o.startcopyout,
                #[cfg(feature = "pg13")]
                endcopyout: o.endcopyout,
            };
            PQ_COMM_METHODS = &raw const WRAPPED;
        }
    }
}

/// The LSN of a CopyData XLogData message ('d' carrying 'w', dataStart first).
fn xlogdata_lsn(msgtype: c_char, s: *const c_char, len: usize) -> Option<Lsn> {
    if msgtype as u8 != b'd' || len < 9 || s.is_null() {
        return None;
    }
    // SAFETY: s points to len >= 9 bytes of the message being sent.
    let bytes = unsafe { std::slice::from_raw_parts(s as *const u8, 9) };
    (bytes[0] == b'w').then(|| Lsn(u64::from_be_bytes(bytes[1..9].try_into().unwrap())))
}

/// A walsender held here cannot see its own stop request: at shutdown the
/// checkpointer asks walsenders to stop (a procsignal, SIGUSR1) and waits for
/// them, without a timeout, before its shutdown checkpoint. So once a SIGUSR1
/// has arrived (also between two waits: the flag is never cleared), a wait
/// ends the walsender instead. Other procsignals (a sinval catch-up, a
/// barrier, pg_log_backend_memory_contexts) end a waiting walsender too: its
/// consumer reconnects and waits again, which is the price of never hanging
/// a shutdown.
static GOT_SIGUSR1: AtomicBool = AtomicBool::new(false);
static mut PREV_SIGUSR1: pg_sys::pqsigfunc = None;
static mut WATCHING_SIGUSR1: bool = false;

unsafe extern "C-unwind" fn on_sigusr1(signo: c_int) {
    GOT_SIGUSR1.store(true, Ordering::SeqCst);
    // SAFETY: the handler the walsender installed, called as the kernel would.
    unsafe {
        if let Some(prev) = PREV_SIGUSR1 {
            prev(signo);
        }
    }
}

/// Wraps the walsender's SIGUSR1 handler (installed after authentication,
/// so not from the ClientAuthentication hook), once.
fn watch_sigusr1() {
    // SAFETY: process-local state; pqsignal returns the previous handler.
    unsafe {
        if !WATCHING_SIGUSR1 {
            WATCHING_SIGUSR1 = true;
            PREV_SIGUSR1 = pg_sys::pqsignal(libc::SIGUSR1, Some(on_sigusr1));
        }
    }
}

/// What the last wait of this walsender covered: the walsender's position
/// (`MyWalSnd->sentPtr`, the end of the last record it finished decoding)
/// and the WAL the standbys had then flushed.
static mut COVERED: (u64, u64) = (0, 0);

/// Holds a walsender's XLogData message until the standbys have what it
/// carries. A message's own LSN is not enough: a transaction's BEGIN and
/// changes carry earlier positions than its COMMIT, and a consumer such as
/// pg_recvlogical writes them out as they come. All messages produced while
/// decoding one record (a commit) belong to WAL at or before the flush
/// position of now, so the first message of each decoded record waits for
/// that position, and the rest of that record's messages pass (the record is
/// the same while `MyWalSnd->sentPtr`, the end of the last record finished,
/// has not moved).
fn hold_xlogdata(lsn: Lsn) {
    // SAFETY: MyWalSnd is this walsender's slot in shared memory; sentPtr and
    // state are written by this process only; COVERED is process-local.
    unsafe {
        // Only while a logical slot streams: the same connection also runs
        // SQL and COPY (a table sync's rows are 'd' messages too, and one
        // that starts with 'w' is not XLogData).
        let walsnd = pg_sys::MyWalSnd;
        let slot = pg_sys::MyReplicationSlot;
        if walsnd.is_null()
            || slot.is_null()
            || (*slot).data.database == pg_sys::InvalidOid
            || !matches!(
                (*walsnd).state,
                pg_sys::WalSndState::WALSNDSTATE_CATCHUP
                    | pg_sys::WalSndState::WALSNDSTATE_STREAMING
                    | pg_sys::WalSndState::WALSNDSTATE_STOPPING
            )
        {
            return;
        }
        watch_sigusr1();
        let sent = (*walsnd).sentPtr;
        let (covered_sent, covered_upto) = COVERED;
        if sent == covered_sent && lsn.0 <= covered_upto {
            return;
        }
        let target = lsn.0.max(pg_sys::GetFlushRecPtr(std::ptr::null_mut()));
        if wait_for_standbys(Lsn(target), Waiter::Walsender) {
            COVERED = (sent, target);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn putmessage(msgtype: c_char, s: *const c_char, len: usize) -> c_int {
    if let Some(lsn) = xlogdata_lsn(msgtype, s, len) {
        hold_xlogdata(lsn);
    }
    // SAFETY: the original method, with the caller's arguments.
    unsafe { ((*ORIGINAL).putmessage.expect("putmessage"))(msgtype, s, len) }
}

#[pg_guard]
unsafe extern "C-unwind" fn putmessage_noblock(msgtype: c_char, s: *const c_char, len: usize) {
    if let Some(lsn) = xlogdata_lsn(msgtype, s, len) {
        hold_xlogdata(lsn);
    }
    // SAFETY: the original method, with the caller's arguments.
    unsafe { ((*ORIGINAL).putmessage_noblock.expect("putmessage_noblock"))(msgtype, s, len) }
}

/// The built-in SQL decoding functions (by their C names: no catalog access).
fn decoding_functions() -> &'static [pg_sys::Oid; 4] {
    static OIDS: OnceLock<[pg_sys::Oid; 4]> = OnceLock::new();
    OIDS.get_or_init(|| {
        [
            c"pg_logical_slot_get_changes",
            c"pg_logical_slot_peek_changes",
            c"pg_logical_slot_get_binary_changes",
            c"pg_logical_slot_peek_binary_changes",
        ]
        // SAFETY: a lookup in the built-in function table.
        .map(|name| unsafe { pg_sys::fmgr_internal_function(name.as_ptr()) })
    })
}

/// Whether a query calls one of the SQL decoding functions. A cheap test of
/// the statement text first (the functions' names), then the plan itself.
unsafe fn uses_decoding_functions(qd: *mut pg_sys::QueryDesc) -> bool {
    // SAFETY: the executor's QueryDesc, valid for this call.
    unsafe {
        if qd.is_null() || (*qd).sourceText.is_null() || (*qd).plannedstmt.is_null() {
            return false;
        }
        let text = CStr::from_ptr((*qd).sourceText).to_bytes();
        if !text
            .windows(b"logical_slot_".len())
            .any(|w| w.eq_ignore_ascii_case(b"logical_slot_"))
        {
            return false;
        }
        let plan = pg_sys::nodeToString((*qd).plannedstmt.cast());
        let plan_text = CStr::from_ptr(plan).to_string_lossy();
        let found = decoding_functions()
            .iter()
            .any(|oid| plan_text.contains(&format!(":funcid {} ", oid.to_u32())));
        pg_sys::pfree(plan.cast());
        found
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    qd: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the executor's own arguments, passed on unchanged.
    unsafe {
        if !pg_sys::RecoveryInProgress() && uses_decoding_functions(qd) {
            // Before the function consumes anything: a cancelled wait loses
            // nothing. The function reads the end of WAL when it starts, so
            // wait again for what was flushed during the wait, until a wait
            // ends with nothing new (bounded: under a steady load the last
            // round's WAL, milliseconds of it, stays uncovered).
            for _ in 0..100 {
                let flushed = Lsn(pg_sys::GetFlushRecPtr(std::ptr::null_mut()));
                if !wait_for_standbys(flushed, Waiter::Sql)
                    || Lsn(pg_sys::GetFlushRecPtr(std::ptr::null_mut())) == flushed
                {
                    break;
                }
            }
        }
        match PREV_EXECUTOR_RUN {
            Some(prev) => prev(qd, direction, count, execute_once),
            None => pg_sys::standard_ExecutorRun(qd, direction, count, execute_once),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Walsender,
    Sql,
}

thread_local! {
    static LAST_WARNING: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How many of the named standbys must have confirmed (pure, for unit tests):
/// -1: all named; 0: none (off); N: N of them, at most all.
pub fn required(named: usize, min_confirmed: i32) -> usize {
    match min_confirmed {
        m if m < 0 => named,
        m => (m as usize).min(named),
    }
}

/// Waits until enough named standbys have flushed `lsn`. Returns at once on a
/// standby, when nothing is named, or for a walsender of a named slot (then
/// false: nothing was checked, the setting may change before the next call).
fn wait_for_standbys(lsn: Lsn, who: Waiter) -> bool {
    let mut delay = Duration::from_micros(200);
    let mut last_keepalive = Instant::now();
    loop {
        // SAFETY: reads shared state.
        if unsafe { pg_sys::RecoveryInProgress() } {
            return false;
        }
        let names = guc::standby_slot_names();
        let need = required(names.len(), guc::standby_slots_min_confirmed());
        if need == 0 {
            return false;
        }
        if who == Waiter::Walsender {
            if let Some(own) = slot::my_slot_name() {
                if names.contains(&own) {
                    return false;
                }
            }
        }
        let states = slot::standby_flush_positions(&names);
        let confirmed = states
            .iter()
            .filter(|(_, s)| matches!(s, Ok(flushed) if *flushed >= lsn))
            .count();
        if confirmed >= need {
            return true;
        }
        warn_about_unusable(&states);
        if who == Waiter::Walsender {
            exit_if_client_gone();
            exit_if_asked_to_stop();
            if last_keepalive.elapsed() >= Duration::from_secs(1) {
                send_keepalive();
                last_keepalive = Instant::now();
            }
        }
        // SAFETY: this process's latch; interrupts and reloads are handled below.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                delay.as_millis().max(1) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        delay = (delay * 2).min(Duration::from_millis(10));
        pgrx::check_for_interrupts!();
        // SAFETY: the SIGHUP flag; reloading as the walsender's own loop does.
        unsafe {
            if pg_sys::ConfigReloadPending != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
                if pg_sys::am_walsender {
                    // What the walsender's own loop does after a reload.
                    pg_sys::SyncRepInitConfig();
                }
            }
        }
    }
}

fn warn_about_unusable(states: &[(String, Result<Lsn, &'static str>)]) {
    let bad: Vec<String> = states
        .iter()
        .filter_map(|(name, s)| s.as_ref().err().map(|why| format!("\"{name}\" {why}")))
        .collect();
    if bad.is_empty() {
        return;
    }
    let now = Instant::now();
    let due = LAST_WARNING.with(|w| {
        let due = w
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            w.set(Some(now));
        }
        due
    });
    if due {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "sync_logical_slot.standby_slot_names names replication slots that confirm nothing: {}",
                bad.join(", ")
            ),
            "sync_logical_slot",
        )
        .set_detail("Logical decoding waits for the standbys named in sync_logical_slot.standby_slot_names; these cannot confirm.")
        .set_hint("Create the physical slot for the standby, or remove the name from sync_logical_slot.standby_slot_names and reload.")
        .report(PgLogLevel::WARNING);
    }
}

fn exit_if_asked_to_stop() {
    if GOT_SIGUSR1.load(Ordering::SeqCst) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "walsender stops while it waits for the standbys (sync_logical_slot.standby_slot_names)",
            "sync_logical_slot",
        )
        .set_detail("The server is shutting down, or signalled this walsender; it has sent nothing the standbys lack.")
        .report(PgLogLevel::FATAL);
    }
}

/// A walsender held here does not read from its client: notice when the
/// client has gone (the peer closed: POLLRDHUP, even with unread status
/// messages queued), so that the slot is freed for its next connection.
fn exit_if_client_gone() {
    // SAFETY: MyProcPort is this backend's; `sock` is its first field.
    let sock = unsafe {
        if pg_sys::MyProcPort.is_null() {
            return;
        }
        *(pg_sys::MyProcPort as *const c_int)
    };
    let mut fd = libc::pollfd {
        fd: sock,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: a zero-timeout poll of our own socket; nothing is read.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    if n > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            "client went away while its walsender waited for the standbys (sync_logical_slot.standby_slot_names)",
            "sync_logical_slot",
        )
        .report(PgLogLevel::FATAL);
    }
}

/// While holding, the walsender's own loop sends no keepalives: send one a
/// second (walEnd = the end of the last record fully decoded, all of which
/// was sent: safe for the client to confirm), so that a client's
/// wal_receiver_timeout does not end a connection that is only waiting.
fn send_keepalive() {
    // SAFETY: the original methods of this walsender; the message is a
    // complete CopyData 'k' (primary keepalive) message.
    unsafe {
        if ORIGINAL.is_null() || pg_sys::MyWalSnd.is_null() {
            return;
        }
        let mut msg = Vec::with_capacity(18);
        msg.push(b'k');
        msg.extend_from_slice(&(*pg_sys::MyWalSnd).sentPtr.to_be_bytes());
        msg.extend_from_slice(&pg_sys::GetCurrentTimestamp().to_be_bytes());
        msg.push(0);
        if let Some(put) = (*ORIGINAL).putmessage_noblock {
            put(b'd' as c_char, msg.as_ptr() as *const c_char, msg.len());
        }
        if let Some(flush) = (*ORIGINAL).flush_if_writable {
            flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_counts() {
        assert_eq!(required(2, -1), 2);
        assert_eq!(required(2, 0), 0);
        assert_eq!(required(2, 1), 1);
        assert_eq!(required(2, 5), 2);
        assert_eq!(required(0, -1), 0);
    }

    #[test]
    fn only_xlogdata_carries_an_lsn() {
        let mut msg = vec![b'w'];
        msg.extend_from_slice(&0x1_0000_0028u64.to_be_bytes());
        msg.extend_from_slice(&[0; 16]);
        let p = msg.as_ptr() as *const c_char;
        assert_eq!(
            xlogdata_lsn(b'd' as c_char, p, msg.len()),
            Some(Lsn(0x1_0000_0028))
        );
        assert_eq!(xlogdata_lsn(b'k' as c_char, p, msg.len()), None);
        msg[0] = b'k';
        assert_eq!(
            xlogdata_lsn(b'd' as c_char, msg.as_ptr() as *const c_char, msg.len()),
            None
        );
        assert_eq!(xlogdata_lsn(b'd' as c_char, p, 5), None);
    }
}
