//! sync_logical_slot: keeps the primary's logical replication slots
//! failover-ready on its physical standbys (PostgreSQL 15 and 16).
//!
//! This file is the table of contents; see docs/design.md for the contract.
#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

pub mod api; // SQL functions and the status view
pub mod conninfo; // connection strings: parse, override, redact (pure)
pub mod error; // SyncError and its SQLSTATEs
pub mod guc; // settings, check hooks, typed accessors
pub mod pgver; // what differs between PostgreSQL 15 and 16
pub mod plan; // per-slot decisions (pure)
pub mod primary; // the wait for the standbys (standby_slot_names); hooks in C
pub mod readiness; // ready verdicts kept on disk with the copies
pub mod remote; // the primary connection and the remote slot query
pub mod report; // the worker's log lines (SQLSTATE, DETAIL, HINT)
pub(crate) mod signals; // the worker's signal handlers and interrupt flags
pub mod slot; // the only file touching ReplicationSlot internals
pub mod snapshot; // the primary's decoding snapshot files, kept on the standby
pub mod status; // per-slot sync state in shared memory
pub mod sync; // one sync pass: read, decide, apply (the safety argument)
pub mod types; // Lsn, Xid, RemoteSlot, SlotFilter (pure)
pub mod walfiles; // whether the standby still holds WAL from an LSN (files only)
pub mod worker; // background worker registration and main loop

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", bootstrap);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading postmaster globals while the library is being loaded.
    let (preloading, binary_upgrade) = unsafe {
        (
            pg_sys::process_shared_preload_libraries_in_progress,
            pg_sys::IsBinaryUpgrade,
        )
    };
    if !preloading {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "sync_logical_slot must be loaded via shared_preload_libraries",
            "sync_logical_slot",
        )
        .set_hint(
            "Add sync_logical_slot to shared_preload_libraries in postgresql.conf on the primary and on every standby, then restart the server.",
        )
        .report(PgLogLevel::ERROR);
    }
    if binary_upgrade {
        return;
    }
    no_rust_backtraces();
    guc::init();
    status::init();
    api::init();
    primary::init();
    worker::register();
}

/// No Rust backtrace in any client's error: pgrx appends one to the DETAIL
/// of a PostgreSQL error that crossed Rust when `RUST_BACKTRACE` is set in
/// the server's environment (it is, on some hosts). The standard library
/// reads the setting once and caches it; with `RUST_LIB_BACKTRACE=0` seen by
/// that first read, here in the postmaster, every process forked from it
/// captures none. The environment is left as it was. An explicit
/// `RUST_LIB_BACKTRACE` (someone debugging on purpose) is respected.
fn no_rust_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_some() {
        return;
    }
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let _ = std::backtrace::Backtrace::capture();
    std::env::remove_var("RUST_LIB_BACKTRACE");
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests; // the #[pg_test]s, in schema "tests"

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'sync_logical_slot'",
            "wal_level = logical",
        ]
    }
}
