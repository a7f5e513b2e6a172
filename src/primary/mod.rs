//! On the primary: no change reaches a logical consumer before the standbys
//! have it (docs/design.md, invariant 7; `sync_logical_slot.standby_slot_names`,
//! `sync_logical_slot.standby_slots_min_confirmed`).
//!
//! Why: a consumer that confirms a transaction the standby never received
//! holds, after a failover, data the new primary does not have.
//!
//! How, on PostgreSQL 15 and 16 (17 has `synchronized_standby_slots`). The
//! hooks are in C (`hooks.c`), so that no error raised by the code they wrap
//! ever passes through Rust; this module only decides, from shared memory and
//! the settings, whether a position is confirmed:
//! - walsenders: a `ClientAuthentication_hook` wraps `PqCommMethods` for
//!   database walsenders. The first XLogData message sent while the walsender
//!   decodes a WAL record waits until the named standbys' physical slots have
//!   flushed that record's end (read from its segment: `MyWalSnd->sentPtr` is
//!   its start); the record's other messages pass. So no BEGIN, change or
//!   COMMIT goes out before the standbys have the commit, and a record they
//!   already have passes at once: the consumer streams one standby round trip
//!   behind, never one round trip per transaction. While waiting the
//!   walsender honours interrupts and reloads (a slot taken out of the
//!   setting releases it at once), sends keepalives, notices a client that
//!   went away (POLLRDHUP), and ends only on a real stop request
//!   (PROCSIG_WALSND_INIT_STOPPING, seen by a SIGUSR1 wrapper before the
//!   walsender's own handler clears it): barriers, sinval catch-up and other
//!   procsignals leave it alone. Only while a logical slot streams: the same
//!   connection's SQL and COPY (a table sync) pass untouched.
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
//! - Fail closed: a `standby_slot_names` that does not parse (possible only
//!   from the configuration file at server start; a reload with a bad value
//!   keeps the old one) holds every logical consumer, with a WARNING that
//!   says why, until it is corrected.
//!
//! Waiting polls the physical slots' positions (a standby reports its flush
//! right after it flushes) with a short, growing timeout on the latch.

use std::cell::Cell;
use std::ffi::c_int;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::guc;
use crate::slot;
use crate::types::Lsn;

extern "C-unwind" {
    fn sls_install_hooks();
}

/// Installs the hooks (from _PG_init, in the postmaster).
pub fn init() {
    // SAFETY: called once, from _PG_init in the postmaster, before any backend starts.
    unsafe { sls_install_hooks() }
}

// Answers of sls_standbys_state; the same numbers as in hooks.c.
const UNCHECKED: c_int = 0;
const CONFIRMED: c_int = 1;
const WAIT: c_int = 2;
const WAITER_WALSENDER: c_int = 0;

/// How many of the named standbys must have confirmed (pure, for unit tests):
/// -1: all named; 0: none (off); N: N of them, at most all.
pub fn required(named: usize, min_confirmed: i32) -> usize {
    match min_confirmed {
        m if m < 0 => named,
        m => (m as usize).min(named),
    }
}

/// Whether `need` of the standbys' states have flushed `lsn` (pure).
pub fn confirmed_by(states: &[(String, Result<Lsn, &'static str>)], lsn: Lsn, need: usize) -> bool {
    states
        .iter()
        .filter(|(_, s)| matches!(s, Ok(flushed) if *flushed >= lsn))
        .count()
        >= need
}

/// The `need`-th furthest flush among the usable standbys (pure): the
/// position up to which `need` of them have everything. 0/0 when fewer than
/// `need` can confirm.
pub fn confirmed_upto(states: &[(String, Result<Lsn, &'static str>)], need: usize) -> Lsn {
    let mut flushed: Vec<Lsn> = states.iter().filter_map(|(_, s)| s.ok()).collect();
    flushed.sort_unstable_by(|a, b| b.cmp(a));
    match need {
        0 => Lsn(u64::MAX),
        n => flushed.get(n - 1).copied().unwrap_or(Lsn(0)),
    }
}

/// Called by hooks.c for a logical walsender's keepalives: the furthest
/// position the named standbys have flushed (as sls_standbys_state counts
/// them), so that no keepalive tells a consumer of a position past it;
/// u64::MAX when nothing is to be checked, 0/0 while the setting does not
/// parse or too few standbys can confirm.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn sls_standbys_confirmed_upto(waiter: c_int) -> u64 {
    // SAFETY: reads shared state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return u64::MAX;
    }
    let Ok(names) = guc::standby_slot_names() else {
        return 0;
    };
    let need = required(names.len(), guc::standby_slots_min_confirmed());
    if need == 0 {
        return u64::MAX;
    }
    if waiter == WAITER_WALSENDER {
        if let Some(own) = slot::my_slot_name() {
            if names.contains(&own) {
                return u64::MAX;
            }
        }
    }
    confirmed_upto(&slot::standby_flush_positions(&names), need).0
}

/// Called by hooks.c's wait loop: whether enough named standbys have flushed
/// `lsn` (CONFIRMED), or not yet (WAIT), or nothing is to be checked
/// (UNCHECKED: this server is in recovery, no standby is named, or the
/// caller is the walsender of a named slot). Reads shared memory and the
/// settings; warns (at most every 10 s) about named slots that cannot
/// confirm and about a setting that does not parse.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn sls_standbys_state(lsn: u64, waiter: c_int) -> c_int {
    // SAFETY: reads shared state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return UNCHECKED;
    }
    let names = match guc::standby_slot_names() {
        Ok(names) => names,
        Err(why) => {
            warn_invalid_setting(&why);
            return WAIT;
        }
    };
    let need = required(names.len(), guc::standby_slots_min_confirmed());
    if need == 0 {
        return UNCHECKED;
    }
    if waiter == WAITER_WALSENDER {
        if let Some(own) = slot::my_slot_name() {
            if names.contains(&own) {
                return UNCHECKED;
            }
        }
    }
    let states = slot::standby_flush_positions(&names);
    if confirmed_by(&states, Lsn(lsn), need) {
        return CONFIRMED;
    }
    warn_about_unusable(&states);
    WAIT
}

/// hooks.c could not find this walsender's procsignal slot: it then takes
/// any SIGUSR1 during a wait for a stop request (the safe side: a shutdown
/// never hangs on a held walsender).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn sls_warn_stop_detection() {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        "sync_logical_slot could not find this walsender's signal slot",
        "sync_logical_slot",
    )
    .set_detail("While it waits for the standbys (sync_logical_slot.standby_slot_names), any signal to this walsender ends it, not only a shutdown.")
    .report(PgLogLevel::WARNING);
}

thread_local! {
    static LAST_WARNING: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// At most one warning every 10 s per process.
fn warning_due() -> bool {
    let now = Instant::now();
    LAST_WARNING.with(|w| {
        let due = w
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            w.set(Some(now));
        }
        due
    })
}

fn warn_invalid_setting(why: &str) {
    if warning_due() {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "logical decoding waits: sync_logical_slot.standby_slot_names is invalid",
            "sync_logical_slot",
        )
        .set_detail(format!("{why} Logical consumers receive nothing until the setting is corrected, so that none gets a change the standbys may lack."))
        .set_hint("Correct sync_logical_slot.standby_slot_names in postgresql.conf (a comma list of physical slot names, or empty) and reload.")
        .report(PgLogLevel::WARNING);
    }
}

fn warn_about_unusable(states: &[(String, Result<Lsn, &'static str>)]) {
    let bad: Vec<String> = states
        .iter()
        .filter_map(|(name, s)| s.as_ref().err().map(|why| format!("\"{name}\" {why}")))
        .collect();
    if bad.is_empty() || !warning_due() {
        return;
    }
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
    fn keepalives_go_as_far_as_enough_standbys_have_flushed() {
        let states = vec![
            ("a".to_string(), Ok(Lsn(300))),
            ("b".to_string(), Ok(Lsn(100))),
            ("c".to_string(), Err("does not exist")),
        ];
        assert_eq!(confirmed_upto(&states, 1), Lsn(300));
        assert_eq!(confirmed_upto(&states, 2), Lsn(100));
        assert_eq!(
            confirmed_upto(&states, 3),
            Lsn(0),
            "a missing slot confirms nothing"
        );
        assert_eq!(confirmed_upto(&states, 0), Lsn(u64::MAX));
    }

    #[test]
    fn a_position_is_confirmed_by_enough_usable_standbys() {
        let states = vec![
            ("a".to_string(), Ok(Lsn(300))),
            ("b".to_string(), Ok(Lsn(100))),
            ("c".to_string(), Err("does not exist")),
        ];
        assert!(confirmed_by(&states, Lsn(100), 2));
        assert!(!confirmed_by(&states, Lsn(101), 2));
        assert!(confirmed_by(&states, Lsn(300), 1));
        assert!(!confirmed_by(&states, Lsn(301), 1));
        assert!(
            !confirmed_by(&states, Lsn(1), 3),
            "a missing slot confirms nothing"
        );
    }
}
