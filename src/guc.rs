//! The extension's settings: private statics, one `init()`, typed accessors.
//!
//! Every value is validated in a check hook, so a malformed setting is refused
//! at `SET`, at server start (WARNING, default kept) and at reload (LOG, old
//! value kept): a typo never takes the server down. Check hooks never raise an
//! ERROR and never panic across the FFI boundary (a panic there would become an
//! ERROR in the postmaster, which is FATAL).
//!
//! `primary_conninfo` may hold a password. PostgreSQL logs
//! `parameter "..." changed to "..."` with the file's text whenever a string
//! setting's value changes at reload, and echoes the value when a check hook
//! rejects it. So its visible value never changes: the real string is kept in
//! the hook's `extra` (which PostgreSQL stacks and restores like the value),
//! copied into this process by the assign hook, and shown as `********`.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

use crate::conninfo::ConnInfo;
use crate::pgver;
use crate::types::{validate_slot_name, SlotFilter, MAX_IDENTIFIER_LEN};

static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
static MASTER_FDW: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static PRIMARY_CONNINFO_PLACEHOLDER: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));
static SLOT_NAMES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"name_like:%"));
static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
static DROP_EXTRA_SLOTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static LOG_STANDBY_SNAPSHOT: GucSetting<bool> = GucSetting::<bool>::new(false);
static READY_IGNORES_IDLE_SLOTS: GucSetting<bool> = GucSetting::<bool>::new(false);
static STANDBY_SLOT_NAMES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));
static STANDBY_SLOTS_MIN_CONFIRMED: GucSetting<i32> = GucSetting::<i32>::new(-1);

thread_local! {
    /// The real `primary_conninfo`, set by its assign hook (backends are single-threaded).
    static PRIMARY_CONNINFO: RefCell<String> = const { RefCell::new(String::new()) };
}

const HIDDEN: &CStr = c"********";

pub fn init() {
    // SAFETY: called once from _PG_init; every hook below is an `extern "C-unwind"`
    // function that catches panics itself and only returns true/false.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"sync_logical_slot.database",
            c"Local database the sync worker connects to.",
            c"The worker reads its settings and writes no data there; any database that exists on the standby works.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::empty(),
            Some(check_database),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"sync_logical_slot.master_fdw",
            c"postgres_fdw foreign server that gives the primary's connection (see failover_logical_slot_init).",
            c"Used when sync_logical_slot.primary_conninfo is empty. Empty: use this standby's own primary_conninfo.",
            &MASTER_FDW,
            GucContext::Sighup,
            GucFlags::empty(),
            Some(check_identifier),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"sync_logical_slot.primary_conninfo",
            c"Connection string the sync worker uses to reach the primary.",
            c"Takes precedence over master_fdw and this standby's own primary_conninfo. Its value is never shown or logged.",
            &PRIMARY_CONNINFO_PLACEHOLDER,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
            Some(check_primary_conninfo),
            Some(assign_primary_conninfo),
            Some(show_primary_conninfo),
        );
        GucRegistry::define_string_guc_with_hooks(
            c"sync_logical_slot.slot_names",
            c"Which of the primary's logical slots to copy.",
            c"Comma list of slot names (or name:NAME), name_like:PATTERN (SQL LIKE) and plugin:NAME terms; a slot matching any term is copied.",
            &SLOT_NAMES,
            GucContext::Sighup,
            GucFlags::empty(),
            Some(check_slot_names),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"sync_logical_slot.standby_slot_names",
            c"Physical slots of the standbys that must have flushed a transaction before logical consumers receive it.",
            c"Comma list of physical replication slot names on this primary. Empty: no wait.",
            &STANDBY_SLOT_NAMES,
            GucContext::Sighup,
            GucFlags::empty(),
            Some(check_standby_slot_names),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"sync_logical_slot.naptime",
        c"Longest time the sync worker sleeps between two passes.",
        c"The worker syncs sooner after a change; this bounds the wait when nothing moves.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"sync_logical_slot.drop_extra_slots",
        c"Drop local copies whose slot no longer exists on the primary.",
        c"Only slots this extension created are ever dropped.",
        &DROP_EXTRA_SLOTS,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_bool_guc(
        c"sync_logical_slot.log_standby_snapshot",
        c"While a new copy waits for the primary's slot, ask the primary to log a running-xacts record (pg_log_standby_snapshot(), PostgreSQL 16).",
        c"A write on the primary, so off by default: the worker's role needs EXECUTE on pg_log_standby_snapshot() there.",
        &LOG_STANDBY_SNAPSHOT,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_bool_guc(
        c"sync_logical_slot.ready_ignores_idle_slots",
        c"sync_logical_slot_ready() without a slot list leaves out idle slots: no consumer on the primary, not moved since this standby began copying them.",
        c"Such a copy waits (waiting_for_remote) until its consumer reads again. Leaving it out lets a promotion go ahead without it: that slot is then missing on the promoted server.",
        &READY_IGNORES_IDLE_SLOTS,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"sync_logical_slot.standby_slots_min_confirmed",
        c"How many of standby_slot_names must have flushed a transaction before logical consumers receive it.",
        c"-1: all of them; 0: do not wait; N: any N of them.",
        &STANDBY_SLOTS_MIN_CONFIRMED,
        -1,
        1000,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    reserve_prefix();
    warn_if_standby_slot_names_invalid();
}

fn reserve_prefix() {
    // SAFETY: plain call with a static C string, during _PG_init.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"sync_logical_slot".as_ptr()) }
}

fn string_of(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- accessors

pub fn database() -> String {
    string_of(&DATABASE)
}

pub fn master_fdw() -> String {
    string_of(&MASTER_FDW)
}

/// The real `sync_logical_slot.primary_conninfo` (never log it).
pub fn primary_conninfo() -> String {
    PRIMARY_CONNINFO.with(|c| c.borrow().clone())
}

/// The slot filter; Err(why) only for a malformed value let in at server
/// start (see check_slot_names): then nothing may be synced.
pub fn slot_filter() -> Result<SlotFilter, String> {
    SlotFilter::parse(&string_of(&SLOT_NAMES))
}

pub fn slot_names() -> String {
    string_of(&SLOT_NAMES)
}

pub fn naptime() -> Duration {
    Duration::from_millis(NAPTIME_MS.get().max(1) as u64)
}

pub fn drop_extra_slots() -> bool {
    DROP_EXTRA_SLOTS.get()
}

pub fn log_standby_snapshot() -> bool {
    LOG_STANDBY_SNAPSHOT.get()
}

pub fn ready_ignores_idle_slots() -> bool {
    READY_IGNORES_IDLE_SLOTS.get()
}

/// The named standbys' slots, or why the value does not parse: a malformed
/// value can only come from the configuration file at server start (the
/// check hook lets it in then, see `check_standby_slot_names`), and then
/// logical consumers wait rather than go unprotected.
pub fn standby_slot_names() -> Result<Vec<String>, String> {
    parse_standby_slot_names(&string_of(&STANDBY_SLOT_NAMES))
}

pub fn standby_slots_min_confirmed() -> i32 {
    STANDBY_SLOTS_MIN_CONFIRMED.get()
}

/// A server setting by name, as `SHOW` prints it (empty when unknown).
pub fn server_setting(name: &CStr) -> String {
    // SAFETY: GetConfigOption returns a pointer into the GUC's own storage or NULL;
    // we copy it before anything can change it.
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

// ---------------------------------------------------------------- validation (pure)

pub fn parse_standby_slot_names(text: &str) -> Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|s| {
            let s = s.trim();
            validate_slot_name(s).map(|_| s.to_string())
        })
        .collect()
}

pub fn validate_identifier(text: &str) -> Result<(), String> {
    if text.len() > MAX_IDENTIFIER_LEN {
        return Err(format!(
            "\"{text}\" is longer than {MAX_IDENTIFIER_LEN} bytes"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- hooks

/// Runs a validation on a string GUC's new value and reports its error through
/// `GUC_check_errdetail`, never by raising.
unsafe fn check_with(
    newval: *mut *mut c_char,
    validate: impl FnOnce(&str) -> Result<(), String> + std::panic::UnwindSafe,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the (possibly NULL) new value.
    let text = unsafe {
        if newval.is_null() || (*newval).is_null() {
            String::new()
        } else {
            CStr::from_ptr(*newval).to_string_lossy().into_owned()
        }
    };
    match std::panic::catch_unwind(move || validate(&text)) {
        Ok(Ok(())) => true,
        Ok(Err(detail)) => {
            set_check_detail(&detail);
            false
        }
        Err(_) => {
            set_check_detail("internal error while validating the value");
            false
        }
    }
}

fn set_check_detail(detail: &str) {
    let detail = CString::new(detail.replace('\0', " ")).unwrap_or_default();
    // SAFETY: GUC_check_errdetail_string is read by the caller right after the
    // hook returns; a palloc'd copy in the current context lives long enough.
    unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) }
}

unsafe extern "C-unwind" fn check_database(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: see check_with.
    unsafe {
        check_with(newval, |v| {
            if v.trim().is_empty() {
                return Err("the worker needs a database to connect to".into());
            }
            validate_identifier(v)
        })
    }
}

unsafe extern "C-unwind" fn check_identifier(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: see check_with.
    unsafe { check_with(newval, validate_identifier) }
}

/// Fail closed, as check_standby_slot_names: at server start a malformed
/// value is let in (and taken by parallel workers) rather than replaced by
/// the default (which copies every slot); the worker then syncs nothing, withdraws readiness and says why
/// (worker.rs, missing prerequisites) until the value is corrected and
/// reloaded. At a reload or SET it is refused and the old value stays.
unsafe extern "C-unwind" fn check_slot_names(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: see check_with; the flag is a postmaster global.
    let ok = unsafe { check_with(newval, |v| SlotFilter::parse(v).map(|_| ())) };
    if !ok {
        set_check_hint(
            "Use a comma list of slot names, name:NAME, name_like:PATTERN and plugin:NAME, for example 'name_like:%' or 'orders_cdc, plugin:pgoutput'.",
        );
    }
    ok || unsafe { admitting_the_start_value() }
}

/// Whether a value that fails its check is still let in (fail closed): the
/// postmaster loading the library applies the configuration file's value,
/// and a parallel worker restores its leader's values (RestoreGUCState) and
/// must take the same one, or every parallel query would fail with it.
///
/// # Safety
/// Reads two postmaster/backend globals.
unsafe fn admitting_the_start_value() -> bool {
    // SAFETY: plain bools of this process.
    unsafe {
        pg_sys::process_shared_preload_libraries_in_progress || pg_sys::InitializingParallelWorker
    }
}

/// Fail closed: at server start (the postmaster loading the library, which
/// applies the configuration file's value here) a malformed value is let in,
/// so that it is not replaced by the default (empty: no protection). The
/// walsenders then hold every consumer and say why (primary/mod.rs). Parallel
/// workers take it from their leader. Anywhere else (a reload, ALTER SYSTEM)
/// it is refused and the old value stays.
unsafe extern "C-unwind" fn check_standby_slot_names(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: see check_with; the flag is a postmaster global.
    unsafe {
        check_with(newval, |v| parse_standby_slot_names(v).map(|_| ()))
            || admitting_the_start_value()
    }
}

/// At server start: a malformed `standby_slot_names` is kept (fail closed) and
/// said once, in the postmaster's log.
fn warn_if_standby_slot_names_invalid() {
    if let Err(why) = standby_slot_names() {
        pgrx::pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "invalid value for parameter \"sync_logical_slot.standby_slot_names\": \"{}\"",
                string_of(&STANDBY_SLOT_NAMES)
            ),
            "sync_logical_slot",
        )
        .set_detail(format!("{why} Logical consumers receive nothing until the setting is corrected."))
        .set_hint("Correct sync_logical_slot.standby_slot_names in postgresql.conf (a comma list of physical slot names, or empty) and reload.")
        .report(pgrx::PgLogLevel::WARNING);
    }
}

fn set_check_hint(hint: &str) {
    let hint = CString::new(hint).unwrap_or_default();
    // SAFETY: as set_check_detail.
    unsafe { pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr()) }
}

/// Validates the connection string, keeps it in `extra`, and replaces the
/// visible value by an empty string so that it is never logged (module comment).
unsafe extern "C-unwind" fn check_primary_conninfo(
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes valid pointers; the replacement value and the
    // extra are allocated the way this server version's GUC code frees them.
    unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        let real = CStr::from_ptr(*newval).to_owned();
        let valid = check_with(newval, |v| ConnInfo::parse(v).map(|_| ()));
        if !valid {
            set_check_hint("The value is not shown, as it may contain a password.");
        }
        // The rejection message echoes *newval: hide it either way.
        let replacement = pgver::guc_strdup(if valid || real.as_bytes().is_empty() {
            c""
        } else {
            HIDDEN
        });
        if replacement.is_null() {
            return false;
        }
        pgver::guc_free((*newval).cast());
        *newval = replacement;
        if !valid {
            return false;
        }
        let copy = pgver::guc_strdup(&real);
        if copy.is_null() {
            return false;
        }
        *extra = copy.cast();
        true
    }
}

unsafe extern "C-unwind" fn assign_primary_conninfo(_newval: *const c_char, extra: *mut c_void) {
    // SAFETY: extra is NULL or the NUL-terminated string our check hook made.
    let real = unsafe {
        if extra.is_null() {
            String::new()
        } else {
            CStr::from_ptr(extra.cast::<c_char>())
                .to_string_lossy()
                .into_owned()
        }
    };
    let _ = std::panic::catch_unwind(|| PRIMARY_CONNINFO.with(|c| *c.borrow_mut() = real));
}

unsafe extern "C-unwind" fn show_primary_conninfo() -> *const c_char {
    let set = PRIMARY_CONNINFO
        .try_with(|c| !c.borrow().is_empty())
        .unwrap_or(false);
    if set {
        HIDDEN.as_ptr()
    } else {
        c"".as_ptr()
    }
}

/// Runs the check hook of `sync_logical_slot.NAME` on `value` as PostgreSQL would:
/// `Ok(value it would store)` or `Err(detail)`. For tests of the hooks themselves.
#[cfg(any(test, feature = "pg_test"))]
pub fn run_check_hook(name: &str, value: &str) -> Result<String, String> {
    let hook: unsafe extern "C-unwind" fn(
        *mut *mut c_char,
        *mut *mut c_void,
        pg_sys::GucSource::Type,
    ) -> bool = match name {
        "database" => check_database,
        "master_fdw" => check_identifier,
        "primary_conninfo" => check_primary_conninfo,
        "slot_names" => check_slot_names,
        "standby_slot_names" => check_standby_slot_names,
        other => panic!("no check hook for {other}"),
    };
    let c = CString::new(value).unwrap();
    // SAFETY: the value is allocated as the GUC code allocates it; the extra is freed likewise.
    unsafe {
        let mut newval = pgver::guc_strdup(&c);
        let mut extra: *mut c_void = std::ptr::null_mut();
        pg_sys::GUC_check_errdetail_string = std::ptr::null_mut();
        let ok = hook(&mut newval, &mut extra, pg_sys::GucSource::PGC_S_FILE);
        let stored = CStr::from_ptr(newval).to_string_lossy().into_owned();
        pgver::guc_free(newval.cast());
        if !extra.is_null() {
            pgver::guc_free(extra);
        }
        if ok {
            Ok(stored)
        } else {
            let detail = pg_sys::GUC_check_errdetail_string;
            Err(if detail.is_null() {
                String::new()
            } else {
                CStr::from_ptr(detail).to_string_lossy().into_owned()
            } + " | value shown: "
                + &stored)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_slot_names_parse() {
        assert_eq!(parse_standby_slot_names("").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_standby_slot_names("standby1, standby_2").unwrap(),
            vec!["standby1".to_string(), "standby_2".to_string()]
        );
        assert!(parse_standby_slot_names("standby1,,x").is_err());
        assert!(parse_standby_slot_names("Standby").is_err());
    }

    #[test]
    fn identifiers_are_bounded() {
        assert!(validate_identifier("master_fdw").is_ok());
        assert!(validate_identifier(&"x".repeat(64)).is_err());
    }
}
