//! The only file that touches PostgreSQL's replication slot internals.
//!
//! Every call into `ReplicationSlot*`, the slot array and the locks that guard
//! it is wrapped here, once. The sync module above decides; this module does.
//!
//! How a copy lives on a standby (15 forbids `pg_create_logical_replication_slot`
//! in recovery, and on 16 it would decode up to a consistent point of its own
//! rather than take the primary's positions, so the copy is made with the
//! internal API, as pg_failover_slots and PostgreSQL 17 do):
//! - created as a *temporary* slot (`RS_TEMPORARY`) owned by the worker, that
//!   reserves the standby's own WAL horizon (its last restartpoint) and its
//!   oldest safe decoding xid as `catalog_xmin`. A temporary slot vanishes if
//!   the worker exits or the server restarts: nothing half-made survives;
//! - a marker file `pg_replslot/<name>/sync_logical_slot` records that this
//!   extension made the slot. It lives in the slot's own directory, so it is
//!   written durably with the slot, removed with it by whoever drops it, and
//!   left out of base backups together with it;
//! - moved forward by writing the slot's persistent data under its spinlock,
//!   saved to disk *before* the in-memory horizons (`effective_catalog_xmin`)
//!   move, so that a crash never leaves a slot on disk that claims rows or WAL
//!   already given up;
//! - made persistent with `ReplicationSlotPersist` once the sync module says so.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use pgrx::pg_sys;

use crate::error::SyncError;
use crate::plan::Target;
use crate::types::{Lsn, Xid};

/// Name of the ownership marker inside a slot's directory: this extension made the copy.
const OWNER_MARKER: &str = "sync_logical_slot";
/// Marker of a slot seen on this server while it was a primary: after a
/// switchover it is a leftover of that history, which the sync replaces.
const PRIMARY_MARKER: &str = "sync_logical_slot.primary";

// C macros absent from the bindings: indexes into MainLWLockArray
// (storage/lwlocknames.h, the same in PostgreSQL 15 and 16). A pg_test checks
// the names against the running server.
const PROC_ARRAY_LOCK: usize = 4;
const SLOT_ALLOCATION_LOCK: usize = 36;
const SLOT_CONTROL_LOCK: usize = 37;

fn main_lock(index: usize) -> *mut pg_sys::LWLock {
    // SAFETY: MainLWLockArray is set up at startup and has more than 37 entries.
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(index)).lock }
}

/// The wait-event name of a main lock, e.g. "ReplicationSlotControl" (for the pg_test).
pub fn main_lock_name(index: usize) -> String {
    // SAFETY: the lock exists (see main_lock); the name is a static string.
    unsafe {
        let tranche = (*main_lock(index)).tranche;
        let name = pg_sys::GetLWLockIdentifier(pg_sys::PG_WAIT_LWLOCK, tranche);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

pub const LOCKS_FOR_TEST: [(usize, &str); 3] = [
    (PROC_ARRAY_LOCK, "ProcArray"),
    (SLOT_ALLOCATION_LOCK, "ReplicationSlotAllocation"),
    (SLOT_CONTROL_LOCK, "ReplicationSlotControl"),
];

/// One logical slot of this server, as its slot array has it.
#[derive(Clone, Debug)]
pub struct Local {
    pub name: String,
    pub database_oid: pg_sys::Oid,
    pub plugin: String,
    pub persistent: bool,
    pub active_pid: i32,
    pub two_phase: bool,
    pub two_phase_at: Lsn,
    pub invalidated: Option<crate::pgver::Invalidation>,
    pub restart_lsn: Lsn,
    pub confirmed_flush_lsn: Lsn,
    pub catalog_xmin: Xid,
}

impl Local {
    /// From a copy of a slot's persistent data (taken under its spinlock).
    fn from_data(d: &pg_sys::ReplicationSlotPersistentData, active_pid: i32) -> Local {
        Local {
            name: name_str(&d.name),
            database_oid: d.database,
            plugin: name_str(&d.plugin),
            persistent: d.persistency == pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
            active_pid,
            two_phase: d.two_phase,
            two_phase_at: Lsn(d.two_phase_at),
            invalidated: crate::pgver::invalidation(d),
            restart_lsn: Lsn(d.restart_lsn),
            confirmed_flush_lsn: Lsn(d.confirmed_flush),
            catalog_xmin: Xid(d.catalog_xmin.into_inner()),
        }
    }
}

/// The `two_phase_at` of a logical slot, from its state file as the primary
/// serves it (`sync_logical_slot_read_slot_state`): None unless the file is
/// a slot state file of this layout (its magic number, long enough) with
/// two-phase decoding enabled. The file is `ReplicationSlotOnDisk`: four
/// 32-bit words (magic, checksum, version, length), then the slot's
/// persistent data, laid out as this server's own (a physical standby runs
/// the primary's major version on the same platform).
pub fn two_phase_at_from_state_file(file: &[u8]) -> Option<Lsn> {
    const MAGIC: u32 = 0x1051CA1;
    const HEADER: usize = 16;
    type Data = pg_sys::ReplicationSlotPersistentData;
    if file.len() < HEADER + std::mem::size_of::<Data>()
        || u32::from_ne_bytes(file[0..4].try_into().ok()?) != MAGIC
    {
        return None;
    }
    let at = HEADER + std::mem::offset_of!(Data, two_phase_at);
    let flag = HEADER + std::mem::offset_of!(Data, two_phase);
    let lsn = Lsn(u64::from_ne_bytes(file[at..at + 8].try_into().ok()?));
    (file[flag] != 0 && lsn.is_valid()).then_some(lsn)
}

fn name_str(n: &pg_sys::NameData) -> String {
    // SAFETY: NameData is a NUL-terminated char array of NAMEDATALEN bytes.
    unsafe { CStr::from_ptr(n.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn slot_array() -> impl Iterator<Item = *mut pg_sys::ReplicationSlot> {
    // SAFETY: the array has max_replication_slots entries (a flexible array
    // member in C, declared with length 1 in the bindings).
    let (base, n) = unsafe {
        (
            (&raw mut (*pg_sys::ReplicationSlotCtl).replication_slots)
                .cast::<pg_sys::ReplicationSlot>(),
            pg_sys::max_replication_slots.max(0) as usize,
        )
    };
    (0..n).map(move |i| unsafe { base.add(i) })
}

/// A copy of every slot in use: its persistent data and active_pid.
fn slots_in_use() -> Vec<(pg_sys::ReplicationSlotPersistentData, i32)> {
    let mut out = Vec::new();
    // SAFETY: slots are read under ReplicationSlotControlLock (no slot is
    // created or dropped meanwhile) and each one's fields under its spinlock.
    unsafe {
        pg_sys::LWLockAcquire(main_lock(SLOT_CONTROL_LOCK), pg_sys::LWLockMode::LW_SHARED);
        for s in slot_array() {
            if !(*s).in_use {
                continue;
            }
            pg_sys::SpinLockAcquire(&raw mut (*s).mutex);
            let d = (*s).data;
            let active_pid = (*s).active_pid;
            pg_sys::SpinLockRelease(&raw mut (*s).mutex);
            out.push((d, active_pid));
        }
        pg_sys::LWLockRelease(main_lock(SLOT_CONTROL_LOCK));
    }
    out
}

/// A fingerprint of slot positions, read from shared memory only (no
/// catalog access): for every persistent logical slot that
/// `select(name, plugin)` accepts, its place in the array, database,
/// restart_lsn, confirmed_flush_lsn and catalog_xmin; and the catalog_xmin of
/// the physical slot `physical` (the feedback a standby's copies depend on).
/// It changes when a selected slot moves, appears, goes or is invalidated.
/// Never 0, so that 0 can stand for "not known yet". Also returns how many
/// slots are in use (what one look costs). `select` runs after the slots'
/// lock is released.
pub fn fingerprint(physical: &str, select: &dyn Fn(&str, &str) -> bool) -> (u64, usize) {
    let mut in_use = Vec::new();
    // SAFETY: as in slots_in_use.
    unsafe {
        pg_sys::LWLockAcquire(main_lock(SLOT_CONTROL_LOCK), pg_sys::LWLockMode::LW_SHARED);
        for (i, s) in slot_array().enumerate() {
            if !(*s).in_use {
                continue;
            }
            pg_sys::SpinLockAcquire(&raw mut (*s).mutex);
            let d = (*s).data;
            pg_sys::SpinLockRelease(&raw mut (*s).mutex);
            in_use.push((i, d));
        }
        pg_sys::LWLockRelease(main_lock(SLOT_CONTROL_LOCK));
    }
    let mut h = Fingerprint::default();
    for (i, d) in &in_use {
        // SAFETY: NameData copies, NUL-terminated.
        let name = unsafe { CStr::from_ptr(d.name.data.as_ptr()) }.to_string_lossy();
        if d.database == pg_sys::InvalidOid {
            if name == physical {
                h.add(u64::MAX);
                h.add(u64::from(d.catalog_xmin.into_inner()));
            }
            continue;
        }
        if d.persistency != pg_sys::ReplicationSlotPersistency::RS_PERSISTENT {
            continue;
        }
        // SAFETY: as above.
        let plugin = unsafe { CStr::from_ptr(d.plugin.data.as_ptr()) }.to_string_lossy();
        if !select(&name, &plugin) {
            continue;
        }
        h.add(*i as u64);
        h.add(u64::from(u32::from(d.database)));
        h.add(d.restart_lsn);
        h.add(d.confirmed_flush);
        h.add(u64::from(d.catalog_xmin.into_inner()));
    }
    (h.finish(), in_use.len())
}

/// The fingerprint of this server's own persistent logical slots: equal
/// values mean none was created, moved, dropped or invalidated in between.
pub fn logical_slots_fingerprint() -> u64 {
    fingerprint("", &|_, _| true).0
}

/// FNV-1a over 64-bit words: cheap, and any change of a word changes the result.
struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    fn add(&mut self, word: u64) {
        for b in word.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0.max(1)
    }
}

/// Every logical slot in use on this server.
pub fn local_logical_slots() -> Vec<Local> {
    slots_in_use()
        .iter()
        .filter(|(d, _)| d.database != pg_sys::InvalidOid)
        .map(|(d, pid)| Local::from_data(d, *pid))
        .collect()
}

/// The name of the slot this process has acquired, if any (a walsender's).
pub fn my_slot_name() -> Option<String> {
    // SAFETY: MyReplicationSlot is this process's; its name does not change while held.
    unsafe {
        let s = pg_sys::MyReplicationSlot;
        (!s.is_null()).then(|| name_str(&(*s).data.name))
    }
}

/// For each name: the WAL position its physical slot has confirmed flushed
/// (a standby's feedback), or why it confirms nothing. A physical slot that
/// has not reserved WAL yet (no standby connected so far) confirms 0/0.
pub fn standby_flush_positions(names: &[String]) -> Vec<(String, Result<Lsn, &'static str>)> {
    let slots = slots_in_use();
    names
        .iter()
        .map(|n| {
            let state = match slots.iter().find(|(d, _)| name_str(&d.name) == *n) {
                None => Err("does not exist"),
                Some((d, _)) if d.database != pg_sys::InvalidOid => Err("is not a physical slot"),
                Some((d, _)) if crate::pgver::invalidation(d).is_some() => Err("is invalidated"),
                Some((d, _)) => Ok(Lsn(d.restart_lsn)),
            };
            (n.clone(), state)
        })
        .collect()
}

fn marker_path(name: &str, marker: &str) -> PathBuf {
    PathBuf::from("pg_replslot").join(name).join(marker)
}

/// Whether this extension created the slot (its directory holds our marker).
pub fn is_ours(name: &str) -> bool {
    marker_path(name, OWNER_MARKER).exists()
}

/// Whether the slot was seen on this server while it was a primary.
pub fn is_from_primary_life(name: &str) -> bool {
    marker_path(name, PRIMARY_MARKER).exists()
}

/// Writes a marker durably (file and directory fsynced).
fn write_marker(name: &str, marker: &str, text: &[u8]) -> Result<(), SyncError> {
    let path = marker_path(name, marker);
    let io = |e: std::io::Error| {
        SyncError::Internal(format!("could not write file \"{}\": {e}", path.display()))
    };
    let mut f = fs::File::create(&path).map_err(io)?;
    f.write_all(text).map_err(io)?;
    f.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

fn mark_ours(name: &str) -> Result<(), SyncError> {
    write_marker(
        name,
        OWNER_MARKER,
        b"created by sync_logical_slot as a copy of the primary server's slot\n",
    )
}

/// On a primary: marks every persistent logical slot as belonging to this
/// server's primary history (a promoted copy stops being a copy). If the
/// server later becomes a standby again, the sync replaces these slots with
/// fresh copies instead of trusting positions from another history.
/// Returns how many slots were newly marked.
pub fn mark_primary_slots() -> usize {
    let mut marked = 0;
    for l in local_logical_slots() {
        if !l.persistent || is_from_primary_life(&l.name) {
            continue;
        }
        if write_marker(
            &l.name,
            PRIMARY_MARKER,
            b"this slot existed while this server was a primary\n",
        )
        .is_ok()
        {
            // Written first, removed second: a crash in between leaves both,
            // and the primary marker wins.
            let _ = fs::remove_file(marker_path(&l.name, OWNER_MARKER));
            marked += 1;
        }
    }
    marked
}

/// The acquired slot; released on drop, also when an ERROR unwinds through.
struct Acquired;

impl Acquired {
    fn new(name: &str) -> Acquired {
        let c = CString::new(name).expect("slot names have no NUL");
        // SAFETY: no slot is acquired by this process (Acquired values never nest);
        // nowait: a slot busy elsewhere is an ERROR for this slot, not a wait.
        unsafe { pg_sys::ReplicationSlotAcquire(c.as_ptr(), true) };
        Acquired
    }

    fn slot(&self) -> *mut pg_sys::ReplicationSlot {
        // SAFETY: set by ReplicationSlotAcquire/Create while this value lives.
        unsafe { pg_sys::MyReplicationSlot }
    }
}

impl Drop for Acquired {
    fn drop(&mut self) {
        release_if_held();
    }
}

/// Releases the slot this process holds, if any (also after an ERROR).
pub fn release_if_held() {
    // SAFETY: MyReplicationSlot is this process's; release is what core's
    // error recovery does too.
    unsafe {
        if !pg_sys::MyReplicationSlot.is_null() {
            pg_sys::ReplicationSlotRelease();
        }
    }
}

/// Creates a temporary copy that reserves this standby's WAL and catalog
/// horizons, marks it ours, and returns it. WAL is reserved from
/// `primary_restart_lsn` (the primary's slot's) when this standby still holds
/// every segment from there on, else from the last restartpoint.
pub fn create_temporary(
    name: &str,
    database_oid: pg_sys::Oid,
    plugin: &str,
    two_phase: bool,
    primary_restart_lsn: Lsn,
) -> Result<Local, SyncError> {
    let c = CString::new(name).expect("slot names have no NUL");
    // SAFETY: the worker holds no slot; ReplicationSlotCreate leaves the new
    // slot acquired in MyReplicationSlot, and `guard` releases it.
    let guard = unsafe {
        create_slot(&c, two_phase);
        Acquired
    };
    // Marked ours at once (ReplicationSlotCreate made its directory): should
    // anything below raise an ERROR, the half-made copy is still ours, so the
    // next pass re-creates it (plan: a temporary copy without its
    // reservations) instead of taking it for someone else's slot for ever.
    if let Err(e) = mark_ours(name) {
        drop(guard);
        // Unmarked, it would never be ours to drop: give it up now.
        drop_slot(name);
        return Err(e);
    }
    #[cfg(feature = "pg_test")]
    if FAIL_AFTER_MARK.swap(false, std::sync::atomic::Ordering::SeqCst) {
        pgrx::error!("injected fault after creating the copy of \"{name}\"");
    }
    let slot = guard.slot();
    // SAFETY: the slot is ours and acquired. Fields are written under its
    // spinlock; the catalog_xmin reservation under ProcArrayLock, as core's
    // CreateInitDecodingContext does, so that no concurrent horizon
    // computation passes it by.
    unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).data.database = database_oid;
        let p = &mut (*slot).data.plugin.data;
        let room = p.len() - 1;
        p.fill(0);
        for (d, s) in p.iter_mut().zip(plugin.bytes().take(room)) {
            *d = s as std::ffi::c_char;
        }
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);

        // From where the primary's slot restarts, when that WAL is still
        // here; else from the last restartpoint's redo pointer, on 15 and 16 alike.
        if !reserve_wal_at(primary_restart_lsn) {
            crate::pgver::reserve_wal_from_redo();
        }

        pg_sys::LWLockAcquire(main_lock(PROC_ARRAY_LOCK), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let xmin = pg_sys::GetOldestSafeDecodingTransactionId(true);
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).effective_catalog_xmin = xmin;
        (*slot).data.catalog_xmin = xmin;
        (*slot).data.confirmed_flush = (*slot).data.restart_lsn;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotsComputeRequiredXmin(true);
        pg_sys::LWLockRelease(main_lock(PROC_ARRAY_LOCK));

        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotSave();
    }
    // SAFETY: reading the slot we hold.
    let local = unsafe { snapshot_of(slot) };
    drop(guard);
    Ok(local)
}

/// Reserves WAL for the slot this process has just created from `wanted`, an
/// LSN older than the last restartpoint, when every segment from there on is
/// still on disk (walfiles). The reservation is published first and the files
/// looked for after it: a restartpoint that starts later keeps them. One that
/// was already under way may still remove some (as with PostgreSQL 17's own
/// slot sync); it then normally invalidates the copy first, and `advance`
/// refuses to make a copy persistent whose WAL is gone. When the files are
/// not all there, nothing stays reserved and the caller reserves from the
/// redo pointer. False when not reserved.
///
/// # Safety
/// This process holds a newly created slot with no WAL reserved yet.
unsafe fn reserve_wal_at(wanted: Lsn) -> bool {
    // SAFETY: reads server globals; the caller holds the new slot, as
    // reserve_wal_from requires.
    unsafe {
        let redo = pg_sys::GetRedoRecPtr();
        // With max_slot_wal_keep_size set, a copy reserved far back could be
        // invalidated by the next restartpoint: only the usual reservation.
        if !wanted.is_valid() || wanted.0 >= redo || pg_sys::max_slot_wal_keep_size_mb >= 0 {
            return false;
        }
        if reserve_wal_from(wanted.0)
            && crate::walfiles::held_from(
                std::path::Path::new("pg_wal"),
                wanted,
                Lsn(redo),
                crate::readiness::timeline(),
                segment_size(),
            )
        {
            return true;
        }
        reserve_wal_from(0);
        false
    }
}

/// Publishes `lsn` as the restart_lsn of the slot this process holds and
/// recomputes the WAL every slot keeps; then whether its segment is still
/// there (not removed by a restartpoint that ran before it was published).
/// 0 gives the reservation up.
///
/// # Safety
/// This process holds a slot (MyReplicationSlot) it may reserve WAL for.
pub unsafe fn reserve_wal_from(lsn: u64) -> bool {
    // SAFETY: MyReplicationSlot is ours; fields are written under its spinlock.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).data.restart_lsn = lsn;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotsComputeRequiredLSN();
        pg_sys::XLogGetLastRemovedSegno() < lsn / segment_size()
    }
}

/// The WAL segment size of this server.
pub fn segment_size() -> u64 {
    // SAFETY: a global set once at start.
    unsafe { pg_sys::wal_segment_size.max(1) as u64 }
}

/// Fault injection for a pg_test: the next `create_temporary` raises an
/// ERROR right after the copy is created and marked.
#[cfg(feature = "pg_test")]
pub static FAIL_AFTER_MARK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

unsafe fn create_slot(name: &CStr, two_phase: bool) {
    // SAFETY: see create_temporary.
    unsafe {
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            true,
            pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
            two_phase,
        )
    }
}

unsafe fn snapshot_of(slot: *mut pg_sys::ReplicationSlot) -> Local {
    // SAFETY: the caller holds the slot; fields are read under its spinlock.
    unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let d = (*slot).data;
        let active_pid = (*slot).active_pid;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        Local::from_data(&d, active_pid)
    }
}

/// Moves a copy to `target` (the sync module guarantees: forward only, within
/// the flushed WAL) and makes it persistent if asked. Saves it to disk before
/// the in-memory horizons move.
pub fn advance(name: &str, target: &Target, persist: bool) -> Result<(), SyncError> {
    let guard = Acquired::new(name);
    let slot = guard.slot();
    // SAFETY: reads a shared counter (before the slot's spinlock: this takes another).
    let removed_segno = unsafe { pg_sys::XLogGetLastRemovedSegno() };
    let segment = segment_size();
    // SAFETY: the slot is acquired by this process; fields under its spinlock.
    // The write is merged with what the slot holds now (plan::merge: nothing
    // moves back), so a session's advance made since the plan read the copy
    // is kept.
    let written = unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let d = &mut (*slot).data;
        // Invalidated since the plan read it (a checkpoint removed its WAL, or
        // on 16 replay removed its catalog rows): never written over, which
        // would make it look valid again; the next pass re-creates it.
        if let Some(cause) = crate::pgver::invalidation(d) {
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
            drop(guard);
            return Err(SyncError::Internal(format!(
                "the copy of \"{name}\" was invalidated on this standby ({}) while it was synced; it is copied afresh at the next pass",
                cause.as_str()
            )));
        }
        let current = Target {
            restart_lsn: Lsn(d.restart_lsn),
            confirmed_flush_lsn: Lsn(d.confirmed_flush),
            catalog_xmin: Xid(d.catalog_xmin.into_inner()),
            two_phase: d.two_phase,
            two_phase_at: Lsn(d.two_phase_at),
        };
        let merged = crate::plan::merge(current, *target);
        // Made persistent, a copy must still find its WAL here: a restartpoint
        // under way when a temporary copy reserved old WAL (reserve_wal_at)
        // may have removed it since. Then the copy is made again.
        if persist && removed_segno >= merged.restart_lsn.0 / segment {
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
            drop(guard);
            drop_slot(name);
            return Err(SyncError::Internal(format!(
                "WAL from {} was removed on this standby while the copy of \"{name}\" was being made; it is copied afresh at the next pass",
                merged.restart_lsn
            )));
        }
        d.restart_lsn = merged.restart_lsn.0;
        d.confirmed_flush = merged.confirmed_flush_lsn.0;
        d.catalog_xmin = pg_sys::TransactionId::from_inner(merged.catalog_xmin.0);
        d.two_phase = merged.two_phase;
        d.two_phase_at = merged.two_phase_at.0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        merged
    };
    // SAFETY: as above.
    unsafe {
        pg_sys::ReplicationSlotMarkDirty();
        if persist {
            // Marks it persistent and saves it.
            pg_sys::ReplicationSlotPersist();
        } else {
            pg_sys::ReplicationSlotSave();
        }
        // Only now, with the new positions on disk, let the horizons move.
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).effective_catalog_xmin = pg_sys::TransactionId::from_inner(written.catalog_xmin.0);
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotsComputeRequiredXmin(false);
        pg_sys::ReplicationSlotsComputeRequiredLSN();
    }
    drop(guard);
    Ok(())
}

/// Moves a persistent copy's confirmed_flush_lsn forward to `upto` (capped at
/// the flushed WAL; never back). For sync_logical_slot_advance(), in a session.
pub fn advance_confirmed(name: &str, upto: Lsn) -> Result<Lsn, SyncError> {
    let find = || local_logical_slots().into_iter().find(|l| l.name == name);
    let Some(mut local) = find() else {
        return Err(SyncError::NoSuchCopy(name.to_string()));
    };
    if !is_ours(name) || is_from_primary_life(name) {
        return Err(SyncError::NotACopy(name.to_string()));
    }
    if !local.persistent {
        return Err(SyncError::CopyNotReady(name.to_string()));
    }
    let target = upto.min(flushed_lsn());
    if target <= local.confirmed_flush_lsn {
        return Ok(local.confirmed_flush_lsn);
    }
    // The worker holds a persistent copy only while it writes it: let it finish.
    for _ in 0..200 {
        if local.active_pid == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        local = find().ok_or_else(|| SyncError::NoSuchCopy(name.to_string()))?;
    }
    let guard = Acquired::new(name);
    let slot = guard.slot();
    // SAFETY: the slot is acquired by this process; fields under its spinlock.
    let result = unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let current = Lsn((*slot).data.confirmed_flush);
        let new = current.max(target);
        (*slot).data.confirmed_flush = new.0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        if new != current {
            pg_sys::ReplicationSlotMarkDirty();
            pg_sys::ReplicationSlotSave();
        }
        new
    };
    drop(guard);
    Ok(result)
}

/// Drops a slot (nowait: a slot in use is an ERROR for this slot, not a wait).
pub fn drop_slot(name: &str) {
    let c = CString::new(name).expect("slot names have no NUL");
    // SAFETY: the worker holds no slot; ReplicationSlotDrop acquires, then drops.
    unsafe { pg_sys::ReplicationSlotDrop(c.as_ptr(), true) }
}

extern "C-unwind" {
    fn sls_watch_slot_conflicts() -> bool;
    fn sls_slot_conflict_pending() -> bool;
    fn sls_slot_conflict_handled();
    fn sls_slot_conflict_noted();
}

/// A statement of the worker was cancelled for a recovery conflict: answered
/// as if the request had been seen (the signal wrapper can miss one that
/// core's handler consumed first).
pub fn note_slot_conflict() {
    // SAFETY: sets a sig_atomic_t flag.
    unsafe { sls_slot_conflict_noted() }
}

/// Watches for the startup process's request to release a slot it must
/// invalidate (16: a recovery conflict). False when it cannot be watched.
pub fn watch_slot_conflicts() -> bool {
    // SAFETY: the worker is connected to its database; wraps its SIGUSR1 handler.
    unsafe { sls_watch_slot_conflicts() }
}

/// Whether the startup process asked for a slot this worker holds.
pub fn slot_conflict_pending() -> bool {
    // SAFETY: reads a sig_atomic_t flag.
    unsafe { sls_slot_conflict_pending() }
}

/// Answers such a request: releases what the worker holds and drops its
/// temporary copies (the next pass makes them again); persistent copies are
/// held only while a pass writes them.
/// Returns how many temporary copies it dropped.
pub fn release_for_recovery() -> usize {
    // SAFETY: clears a sig_atomic_t flag, before the drop, so that a request
    // arriving meanwhile is answered again.
    unsafe { sls_slot_conflict_handled() };
    // SAFETY: reads this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    let held = local_logical_slots()
        .iter()
        .filter(|l| !l.persistent && l.active_pid == me)
        .count();
    drop_own_temporary_slots();
    held
}

/// Drops every temporary slot this process created (the copies that never
/// became persistent). Used once the server is promoted.
pub fn drop_own_temporary_slots() {
    release_if_held();
    // SAFETY: drops the temporary slots whose active_pid is this process.
    unsafe { pg_sys::ReplicationSlotCleanup() }
}

/// The WAL this standby has received and flushed, or replayed (whichever is
/// further): nothing beyond it may be claimed by a copy.
pub fn flushed_lsn() -> Lsn {
    // SAFETY: plain reads of shared positions.
    unsafe {
        let received = pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), std::ptr::null_mut());
        let replayed = pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut());
        Lsn(received.max(replayed))
    }
}

/// Asks the walreceiver to send hot_standby_feedback now (it does after a
/// SIGHUP), so that a new copy's catalog_xmin is protected on the primary in
/// milliseconds rather than at the next wal_receiver_status_interval.
pub fn request_feedback() {
    // SAFETY: WalRcv is shared memory set up at startup; its pid is read
    // under its spinlock, as core does.
    unsafe {
        let rcv = pg_sys::WalRcv;
        if rcv.is_null() {
            return;
        }
        pg_sys::SpinLockAcquire(&raw mut (*rcv).mutex);
        let pid = (*rcv).pid;
        pg_sys::SpinLockRelease(&raw mut (*rcv).mutex);
        if pid > 0 {
            libc::kill(pid, libc::SIGHUP);
        }
    }
}

/// The local OID of a database, if it exists. Call inside a transaction.
pub fn database_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    // SAFETY: catalog lookup inside a transaction; missing_ok.
    let oid = unsafe { pg_sys::get_database_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The name of a local database. Call inside a transaction.
pub fn database_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: catalog lookup inside a transaction; NULL when it does not exist.
    unsafe {
        let p = pg_sys::get_database_name(oid);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_file(two_phase: bool, two_phase_at: u64) -> Vec<u8> {
        type Data = pg_sys::ReplicationSlotPersistentData;
        let mut file = vec![0u8; 16 + std::mem::size_of::<Data>()];
        file[0..4].copy_from_slice(&0x1051CA1u32.to_ne_bytes());
        let at = 16 + std::mem::offset_of!(Data, two_phase_at);
        file[at..at + 8].copy_from_slice(&two_phase_at.to_ne_bytes());
        file[16 + std::mem::offset_of!(Data, two_phase)] = two_phase as u8;
        file
    }

    #[test]
    fn two_phase_at_is_read_from_a_state_file_only_when_enabled() {
        assert_eq!(
            two_phase_at_from_state_file(&state_file(true, 0x3000028)),
            Some(Lsn(0x3000028))
        );
        assert_eq!(
            two_phase_at_from_state_file(&state_file(false, 0x3000028)),
            None
        );
        assert_eq!(two_phase_at_from_state_file(&state_file(true, 0)), None);
        let mut bad = state_file(true, 0x3000028);
        bad[0] ^= 1;
        assert_eq!(two_phase_at_from_state_file(&bad), None, "not a state file");
        assert_eq!(
            two_phase_at_from_state_file(&state_file(true, 0x3000028)[..40]),
            None,
            "truncated"
        );
    }
}
