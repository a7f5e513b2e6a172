//! Everything that differs between the PostgreSQL majors this library is
//! built for (15 and 16), in one place. The sync logic asks these functions
//! and never tests a version itself.
//!
//! 13 and 14 are end of life and not built; 17 has slot synchronization
//! built in (`sync_replication_slots`), and build.rs refuses it.

use std::ffi::{c_char, c_void, CStr};

use pgrx::pg_sys;

pub use crate::types::Invalidation;

/// The major version this build is for.
#[cfg(feature = "pg15")]
pub const MAJOR: u32 = 15;
#[cfg(feature = "pg16")]
pub const MAJOR: u32 = 16;

/// `pg_log_standby_snapshot()` exists on the primary (16+).
pub const HAS_LOG_STANDBY_SNAPSHOT: bool = MAJOR >= 16;

/// The primary's `pg_replication_slots` column (as text) that says a logical
/// slot was invalidated by a conflict with recovery while that server was a
/// standby (16's `conflicting`); 15 has no such invalidation.
#[cfg(feature = "pg15")]
pub const CONFLICTING_COLUMN: &str = "'false'";
#[cfg(feature = "pg16")]
pub const CONFLICTING_COLUMN: &str = "coalesce(conflicting, false)::text";

/// Whether, and why, a slot is invalidated, from its persistent data.
#[cfg(feature = "pg15")]
pub fn invalidation(d: &pg_sys::ReplicationSlotPersistentData) -> Option<Invalidation> {
    // 15 invalidates only for removed WAL, and marks it this way.
    (d.restart_lsn == 0 && d.invalidated_at != 0).then_some(Invalidation::WalRemoved)
}

#[cfg(feature = "pg16")]
pub fn invalidation(d: &pg_sys::ReplicationSlotPersistentData) -> Option<Invalidation> {
    use pg_sys::ReplicationSlotInvalidationCause as C;
    match d.invalidated {
        C::RS_INVAL_NONE => None,
        C::RS_INVAL_WAL_REMOVED => Some(Invalidation::WalRemoved),
        C::RS_INVAL_HORIZON => Some(Invalidation::RowsRemoved),
        C::RS_INVAL_WAL_LEVEL => Some(Invalidation::WalLevelInsufficient),
        // No other cause exists in 16; treat an unknown one as the gravest.
        #[allow(unreachable_patterns)]
        _ => Some(Invalidation::RowsRemoved),
    }
}

/// Reserves WAL for the slot this process holds (`MyReplicationSlot`, just
/// created, on a standby) from the last restartpoint's redo pointer, which
/// the standby keeps for its own crash recovery: what 15's
/// ReplicationSlotReserveWal does in recovery. A temporary copy then holds
/// WAL from before the primary's slot usually restarts, and becomes
/// persistent at once when the primary's slot is already past it.
///
/// # Safety
/// This process holds a newly created slot with no WAL reserved yet.
#[cfg(feature = "pg15")]
pub unsafe fn reserve_wal_from_redo() {
    // SAFETY: as documented; 15 reserves from the redo pointer in recovery.
    unsafe { pg_sys::ReplicationSlotReserveWal() }
}

/// See the 15 version. 16's ReplicationSlotReserveWal reserves a logical slot
/// in recovery from the *replay* position instead (made for decoding on the
/// standby), and a copy would then wait for the primary's slot to pass that
/// point, up to the primary's next running-xacts record, even when the
/// primary's slot already restarts from WAL the standby holds. So the redo
/// pointer is reserved here the way core does it: set, recompute the
/// required LSN, and retry if a concurrent restartpoint removed that segment.
///
/// # Safety
/// This process holds a newly created slot with no WAL reserved yet.
#[cfg(feature = "pg16")]
pub unsafe fn reserve_wal_from_redo() {
    // SAFETY: MyReplicationSlot is ours (reserve_wal_from's contract).
    unsafe { while !crate::slot::reserve_wal_from(pg_sys::GetRedoRecPtr()) {} }
}

/// A copy of a GUC string value, allocated the way this major's GUC code frees it.
///
/// # Safety
/// The result is freed only with `guc_free` or by the GUC code.
#[cfg(feature = "pg15")]
pub unsafe fn guc_strdup(s: &CStr) -> *mut c_char {
    // SAFETY: GUC code of 15 frees values and extras with free().
    unsafe { libc::strdup(s.as_ptr()) }
}

/// Frees a GUC string value.
///
/// # Safety
/// `p` came from `guc_strdup` or the GUC code, and is not used afterwards.
#[cfg(feature = "pg15")]
pub unsafe fn guc_free(p: *mut c_void) {
    // SAFETY: p came from malloc (GUC code of 15 uses malloc).
    unsafe { libc::free(p) }
}

/// See the 15 version.
///
/// # Safety
/// The result is freed only with `guc_free` or by the GUC code.
#[cfg(feature = "pg16")]
pub unsafe fn guc_strdup(s: &CStr) -> *mut c_char {
    // SAFETY: PostgreSQL 16 keeps GUC strings in its own memory context.
    unsafe { pg_sys::guc_strdup(pg_sys::LOG as i32, s.as_ptr()) }
}

/// See the 15 version.
///
/// # Safety
/// `p` came from `guc_strdup` or the GUC code, and is not used afterwards.
#[cfg(feature = "pg16")]
pub unsafe fn guc_free(p: *mut c_void) {
    // SAFETY: p came from guc_malloc/guc_strdup.
    unsafe { pg_sys::guc_free(p) }
}
