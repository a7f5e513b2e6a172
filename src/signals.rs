//! Signal handling. SIGTERM is PostgreSQL's own `die`. SIGHUP is PostgreSQL's
//! `SignalHandlerForConfigReload`, plus: while the worker waits on the network
//! (inside libpqwalreceiver, which only returns on its own timeouts), it also
//! raises a query cancel, so that the wait ends with an ERROR the step catches
//! and the new settings are used at once instead of after `connect_timeout`.

use pgrx::pg_sys;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

// Raw C symbols: pg_sys wraps its functions in Rust guards, which cannot run in a signal handler.
extern "C-unwind" {
    pub fn die(postgres_signal_arg: c_int);
    fn SignalHandlerForConfigReload(postgres_signal_arg: c_int);
}

static IN_NETWORK_WAIT: AtomicBool = AtomicBool::new(false);
/// A cancel was raised in a network wait: that connection's state is unknown.
static CANCEL_RAISED: AtomicBool = AtomicBool::new(false);

pub unsafe extern "C-unwind" fn handle_sighup(arg: c_int) {
    if IN_NETWORK_WAIT.load(Ordering::SeqCst) || IN_LONG_POLL.load(Ordering::SeqCst) {
        CANCEL_RAISED.store(true, Ordering::SeqCst);
        // SAFETY: sig_atomic_t flags, set as PostgreSQL's StatementCancelHandler sets them.
        unsafe {
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
        }
    }
    // SAFETY: PostgreSQL's handler sets ConfigReloadPending and the latch, saving errno.
    unsafe { SignalHandlerForConfigReload(arg) }
}

/// Sets a flag for as long as it lives, also when an ERROR unwinds through.
struct Raised(&'static AtomicBool);

impl Raised {
    fn new(flag: &'static AtomicBool) -> Raised {
        flag.store(true, Ordering::SeqCst);
        Raised(flag)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        // A cancel raised for the wait that just ended must not hit a
        // later, unrelated check.
        // SAFETY: plain store to a sig_atomic_t that the handlers set only
        // while a flag is raised.
        if !IN_NETWORK_WAIT.load(Ordering::SeqCst) && !IN_LONG_POLL.load(Ordering::SeqCst) {
            unsafe { pg_sys::QueryCancelPending = 0 };
        }
    }
}

/// Runs `f` (a network round trip) so that a SIGHUP interrupts it.
pub fn interruptible_by_reload<T>(f: impl FnOnce() -> T) -> T {
    let _waiting = Raised::new(&IN_NETWORK_WAIT);
    f()
}

/// A session asked for a pass (status::request): if the worker is in the
/// long poll, end it, so that the pass runs now rather than when the
/// primary's slots next move.
pub unsafe extern "C-unwind" fn handle_request(_arg: c_int) {
    if IN_LONG_POLL.load(Ordering::SeqCst) {
        CANCEL_RAISED.store(true, Ordering::SeqCst);
        // SAFETY: sig_atomic_t flags, as in handle_sighup.
        unsafe {
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
        }
    }
}

static IN_LONG_POLL: AtomicBool = AtomicBool::new(false);

/// Runs `f` (the long poll) so that a request for a pass or a reload
/// interrupts it; None, without running it, when one came already. The
/// flag is raised before the check, so a signal between the two is not lost.
pub fn in_long_poll<T>(pending: impl Fn() -> bool, f: impl FnOnce() -> T) -> Option<T> {
    let _polling = Raised::new(&IN_LONG_POLL);
    if pending() || reload_pending() {
        return None;
    }
    Some(f())
}

/// Whether a reload cancelled a network wait since the last call.
pub fn take_cancel_raised() -> bool {
    CANCEL_RAISED.swap(false, Ordering::SeqCst)
}

pub fn reload_pending() -> bool {
    // SAFETY: read of a sig_atomic_t flag.
    unsafe { pg_sys::ConfigReloadPending != 0 }
}
