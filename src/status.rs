//! Per-slot sync state in shared memory: written by the worker after each
//! pass, read by the `sync_logical_slot_status` view in any session; and the
//! control block through which SQL sessions ask the worker for a pass now
//! (`sync_logical_slot_sync_now()`): a temporary copy belongs to the worker
//! that created it, and passes never run concurrently, so sessions do not
//! sync themselves, they ask and wait.
//!
//! A fixed table (no allocation in shared memory after startup) under one
//! LWLock; the worker replaces its content in one short exclusive section per
//! pass, readers copy it out under a shared lock.

use pgrx::{pg_guard, pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};

use crate::plan::State;
use crate::types::{Lsn, Xid};

/// The most slots the status table shows. Slots beyond it are still synced.
pub const CAPACITY: usize = 1024;
const NAME_LEN: usize = 64;
const ERROR_LEN: usize = 256;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Entry {
    name: [u8; NAME_LEN],
    database: [u8; NAME_LEN],
    plugin: [u8; NAME_LEN],
    state: u8,
    ready: bool,
    local_exists: bool,
    remote_restart_lsn: u64,
    remote_confirmed_flush_lsn: u64,
    remote_catalog_xmin: u32,
    local_restart_lsn: u64,
    local_confirmed_flush_lsn: u64,
    local_catalog_xmin: u32,
    /// TimestampTz of the last pass that found the copy synced (0: never).
    last_sync_at: i64,
    /// TimestampTz of the last pass that reached this row's verdict, or
    /// renewed it (0: none).
    verified_at: i64,
    /// The verdict is the record kept on disk with the copy, read at the
    /// worker's start (no pass has reached the primary since).
    from_disk: bool,
    /// No consumer on the primary, and the slot has not moved since this
    /// worker began copying it.
    idle: bool,
    last_error: [u8; ERROR_LEN],
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Table {
    len: u32,
    /// Rows the last pass had, also beyond CAPACITY.
    total: u32,
    entries: [Entry; CAPACITY],
}

// SAFETY: plain old data with no pointers; lives in shared memory as is.
unsafe impl PGRXSharedMemory for Table {}

const EMPTY_ENTRY: Entry = Entry {
    name: [0; NAME_LEN],
    database: [0; NAME_LEN],
    plugin: [0; NAME_LEN],
    state: 0,
    ready: false,
    local_exists: false,
    remote_restart_lsn: 0,
    remote_confirmed_flush_lsn: 0,
    remote_catalog_xmin: 0,
    local_restart_lsn: 0,
    local_confirmed_flush_lsn: 0,
    local_catalog_xmin: 0,
    last_sync_at: 0,
    verified_at: 0,
    from_disk: false,
    idle: false,
    last_error: [0; ERROR_LEN],
};

static TABLE: PgLwLock<Table> = unsafe { PgLwLock::new(c"sync_logical_slot status") };

/// Requests for a pass, and the worker's answers.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Control {
    /// The worker's latch (a pointer into shared memory, the same in every
    /// process), 0 when no worker runs.
    worker_latch: usize,
    /// The worker's pid (0 when none runs): signalled to cut short a long poll.
    worker_pid: i32,
    /// Bumped by each request; the worker serves every request up to the value
    /// it read before a pass.
    requested: u64,
    /// The highest request the worker has answered.
    answered: u64,
    /// Passes completed since the worker started (0: no knowledge yet).
    passes: u64,
    /// The answer: counts, or an error message (empty: success).
    created: u32,
    advanced: u32,
    dropped: u32,
    error: [u8; ERROR_LEN],
    /// Set before the worker connects to `sync_logical_slot.database`,
    /// cleared once connected: still set at the next start means that
    /// connection ended the process (the database does not exist), so that
    /// start waits for the database instead of failing again.
    connecting_to_database: bool,
    /// Why the worker cannot run at all (empty: it can), for the status view.
    worker_error: [u8; ERROR_LEN],
    /// The table holds the verdicts kept on disk (readiness.rs), published
    /// by this worker before its first pass.
    disk_loaded: bool,
}

// SAFETY: plain old data; the latch pointer is into shared memory.
unsafe impl PGRXSharedMemory for Control {}

static CONTROL: PgLwLock<Control> = unsafe { PgLwLock::new(c"sync_logical_slot control") };

pub fn init() {
    pg_shmem_init!(
        TABLE = Table {
            len: 0,
            total: 0,
            entries: [EMPTY_ENTRY; CAPACITY],
        }
    );
    pg_shmem_init!(
        CONTROL = Control {
            worker_latch: 0,
            worker_pid: 0,
            requested: 0,
            answered: 0,
            passes: 0,
            created: 0,
            advanced: 0,
            dropped: 0,
            error: [0; ERROR_LEN],
            connecting_to_database: false,
            worker_error: [0; ERROR_LEN],
            disk_loaded: false,
        }
    );
}

/// Marks the worker's connection to its database as under way (true) or
/// made (false); returns what the previous start left.
pub fn connecting_to_database(now: bool) -> bool {
    let mut c = CONTROL.exclusive();
    std::mem::replace(&mut c.connecting_to_database, now)
}

/// Why the worker cannot run at all (None: it can), shown by the status view.
pub fn set_worker_error(why: Option<&str>) {
    let mut c = CONTROL.exclusive();
    put(&mut c.worker_error, why.unwrap_or(""));
}

pub fn worker_error() -> Option<String> {
    let e = get(&CONTROL.share().worker_error);
    (!e.is_empty()).then_some(e)
}

/// The worker announces itself (its latch and pid), or its exit (None).
/// Either way nothing is known until its next pass or the records on disk:
/// a worker that is gone renews no verdict.
pub fn set_worker(latch: Option<(*mut pg_sys::Latch, i32)>) {
    {
        let mut c = CONTROL.exclusive();
        c.worker_latch = latch.map_or(0, |(l, _)| l as usize);
        c.worker_pid = latch.map_or(0, |(_, pid)| pid);
        c.passes = 0;
        c.disk_loaded = false;
    }
    clear();
}

/// Whether a sync worker runs on this server now.
pub fn worker_running() -> bool {
    CONTROL.share().worker_pid != 0
}

/// Before its first pass the worker shows the verdicts kept on disk.
pub fn publish_from_disk(rows: &[SlotStatus]) {
    publish(rows);
    CONTROL.exclusive().disk_loaded = true;
}

/// Whether the table shows the verdicts read from disk (no pass since).
pub fn disk_loaded() -> bool {
    let c = CONTROL.share();
    c.disk_loaded && c.passes == 0
}

/// The highest request made so far (the worker reads it before a pass).
pub fn requested() -> u64 {
    CONTROL.share().requested
}

/// Whether a request waits for an answer.
pub fn request_pending() -> bool {
    let c = CONTROL.share();
    c.requested > c.answered
}

/// The worker answers every request up to `upto`: counts of the pass, or why none ran.
pub fn answer(upto: u64, result: Result<(u32, u32, u32), String>) {
    let mut c = CONTROL.exclusive();
    if upto > c.answered {
        c.answered = upto;
    }
    match result {
        Ok((created, advanced, dropped)) => {
            c.passes += 1;
            c.created = created;
            c.advanced = advanced;
            c.dropped = dropped;
            c.error = [0; ERROR_LEN];
        }
        Err(e) => put(&mut c.error, &e),
    }
}

/// Passes the worker completed since it started.
pub fn passes() -> u64 {
    CONTROL.share().passes
}

/// A session asks for a pass: returns its request number, or None when no worker runs.
pub fn request() -> Option<u64> {
    let (seq, latch, pid) = {
        let mut c = CONTROL.exclusive();
        c.requested += 1;
        (c.requested, c.worker_latch, c.worker_pid)
    };
    if latch == 0 {
        return None;
    }
    // SAFETY: the worker's latch lives in shared memory for the worker's life;
    // setting a latch of an exited process is harmless (PGPROC latches persist).
    unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    // The worker may be waiting on the primary (the long poll), where its
    // latch is not enough: SIGUSR2 ends that wait (signals.rs).
    // The worker clears its entry when it exits; the latch's owner is checked
    // too, so that a reused pid (a walsender, for which SIGUSR2 means "stop")
    // is never signalled.
    // SAFETY: the latch is in shared memory (see above); owner_pid is an int.
    if pid > 0 && unsafe { (*(latch as *mut pg_sys::Latch)).owner_pid } == pid {
        // SAFETY: kill(2) of our own worker.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
    }
    Some(seq)
}

/// The answer to request `seq`, once the worker gave it.
pub fn answer_for(seq: u64) -> Option<Result<(u32, u32, u32), String>> {
    let c = CONTROL.share();
    if c.answered < seq {
        return None;
    }
    let error = get(&c.error);
    Some(if error.is_empty() {
        Ok((c.created, c.advanced, c.dropped))
    } else {
        Err(error)
    })
}

/// One row of the status view, in Rust types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    pub name: String,
    pub database: String,
    pub plugin: String,
    /// The primary's slot decodes prepared transactions (kept with the
    /// verdict on disk; not in the shared table).
    pub two_phase: bool,
    pub state: State,
    pub ready: bool,
    pub remote_restart_lsn: Lsn,
    pub remote_confirmed_flush_lsn: Lsn,
    pub remote_catalog_xmin: Xid,
    /// None while there is no local copy.
    pub local: Option<(Lsn, Lsn, Xid)>,
    /// TimestampTz of the last pass that found the copy synced (0: never).
    pub last_sync_at: i64,
    /// TimestampTz of the last pass that reached or renewed this verdict.
    pub verified_at: i64,
    /// The verdict comes from the record on disk (readiness.rs), not a pass.
    pub from_disk: bool,
    /// No consumer on the primary, and the slot has not moved since this
    /// worker began copying it (`sync_logical_slot.ready_ignores_idle_slots`).
    pub idle: bool,
    pub last_error: Option<String>,
}

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    // Cut at a char boundary, leaving room for the terminating NUL.
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

const STATES: [State; 6] = [
    State::Synced,
    State::WaitingForRemote,
    State::WaitingForWal,
    State::WaitingForFeedback,
    State::Invalidated,
    State::Error,
];

/// How a state is kept in the table: its index in STATES.
fn state_code(state: State) -> u8 {
    STATES.iter().position(|s| *s == state).unwrap_or(5) as u8
}

/// Replaces the table with this pass's rows (the first CAPACITY of them).
pub fn publish(rows: &[SlotStatus]) {
    let mut t = TABLE.exclusive();
    let n = rows.len().min(CAPACITY);
    for (e, r) in t.entries.iter_mut().zip(rows.iter()) {
        put(&mut e.name, &r.name);
        put(&mut e.database, &r.database);
        put(&mut e.plugin, &r.plugin);
        e.state = state_code(r.state);
        e.ready = r.ready;
        e.remote_restart_lsn = r.remote_restart_lsn.0;
        e.remote_confirmed_flush_lsn = r.remote_confirmed_flush_lsn.0;
        e.remote_catalog_xmin = r.remote_catalog_xmin.0;
        e.local_exists = r.local.is_some();
        let (lr, lc, lx) = r.local.unwrap_or((Lsn(0), Lsn(0), Xid(0)));
        e.local_restart_lsn = lr.0;
        e.local_confirmed_flush_lsn = lc.0;
        e.local_catalog_xmin = lx.0;
        e.last_sync_at = r.last_sync_at;
        e.verified_at = r.verified_at;
        e.from_disk = r.from_disk;
        e.idle = r.idle;
        put(&mut e.last_error, r.last_error.as_deref().unwrap_or(""));
    }
    t.len = n as u32;
    t.total = rows.len() as u32;
}

/// The worker found nothing changed since its last pass: the copies that
/// were synced then are synced now.
pub fn touch_synced(now: i64) {
    let mut t = TABLE.exclusive();
    let len = t.len as usize;
    for e in t.entries[..len].iter_mut() {
        if STATES[(e.state as usize).min(5)] == State::Synced {
            e.last_sync_at = now;
        }
        e.verified_at = now;
    }
}

/// Whether the table holds every row of the last pass (false beyond CAPACITY).
pub fn complete() -> bool {
    let t = TABLE.share();
    t.len == t.total
}

/// The worker stopped keeping the copies current (a prerequisite went
/// missing): no row stays ready on a verdict it can no longer renew. Every
/// row becomes `error` with `why`, until the next pass.
pub fn withdraw(why: &str) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut t = TABLE.exclusive();
    let len = t.len as usize;
    for e in t.entries[..len].iter_mut() {
        e.state = state_code(State::Error);
        e.ready = false;
        e.from_disk = false;
        e.verified_at = now;
        put(&mut e.last_error, why);
    }
    drop(t);
    CONTROL.exclusive().disk_loaded = false;
}

/// Empties the table (the server is not, or no longer, a standby).
pub fn clear() {
    let mut t = TABLE.exclusive();
    t.len = 0;
    t.total = 0;
}

/// A copy of the table's rows.
pub fn read() -> Vec<SlotStatus> {
    let t = TABLE.share();
    t.entries[..t.len as usize]
        .iter()
        .map(|e| {
            let error = get(&e.last_error);
            SlotStatus {
                name: get(&e.name),
                database: get(&e.database),
                plugin: get(&e.plugin),
                two_phase: false,
                state: STATES[(e.state as usize).min(5)],
                ready: e.ready,
                remote_restart_lsn: Lsn(e.remote_restart_lsn),
                remote_confirmed_flush_lsn: Lsn(e.remote_confirmed_flush_lsn),
                remote_catalog_xmin: Xid(e.remote_catalog_xmin),
                local: e.local_exists.then_some((
                    Lsn(e.local_restart_lsn),
                    Lsn(e.local_confirmed_flush_lsn),
                    Xid(e.local_catalog_xmin),
                )),
                last_sync_at: e.last_sync_at,
                verified_at: e.verified_at,
                from_disk: e.from_disk,
                idle: e.idle,
                last_error: (!error.is_empty()).then_some(error),
            }
        })
        .collect()
}
